//! End to end: the real `netiso daemon` against the real Docker engine,
//! busybox containers on one Docker network, the example policy, and
//! connectivity checked from inside the containers.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use netiso_testkit::docker::{tcp_servers, DockerEnv};
use netiso_testkit::{run_in, DaemonProc};

/// `policies/default.toml`, with every group narrowed to this test's
/// containers (an extra label) so that parallel runs never interfere.
fn default_policy_for(tag: &str, dir: &std::path::Path) -> PathBuf {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/default.toml"
    ))
    .unwrap();
    let narrowed = text.replace(
        "labels = { \"netiso.group\" = ",
        &format!("labels = {{ \"netiso.test\" = \"{tag}\", \"netiso.group\" = "),
    );
    assert_ne!(
        text, narrowed,
        "default.toml no longer selects by netiso.group label"
    );
    let path = dir.join("policy.toml");
    std::fs::write(&path, narrowed).unwrap();
    path
}

/// Sends `n` UDP datagrams from inside the container with `pid`.
fn udp_from_container(pid: u32, to: SocketAddr, n: u32) {
    run_in(&PathBuf::from(format!("/proc/{pid}/ns/net")), move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..n {
            s.send_to(format!("x{i}").as_bytes(), to).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

#[test]
fn walkthrough_policy_blocks_denied_pairs_on_one_network_and_counts_drops() {
    let mut env = DockerEnv::new();
    let tmp = tempfile::tempdir().unwrap();
    let policy = default_policy_for(&env.tag, tmp.path());
    let mut daemon = DaemonProc::start(policy);
    let tag = env.tag.clone();
    let label = |group: &'static str| [("netiso.group", group), ("netiso.test", tag.as_str())];

    let back = env.run("back", &label("backend"), &tcp_servers(&[8080, 9090]));
    let front = env.run("front", &label("frontend"), &tcp_servers(&[8080]));
    let guest = env.run("guest", &label("untrusted"), &tcp_servers(&[8080]));
    let plain = env.run("plain", &[], &tcp_servers(&[8080]));
    let names = [back.clone(), front.clone(), guest.clone()];
    daemon.wait_for(
        "the three labelled containers enforced, the plain one seen",
        |s| {
            names
                .iter()
                .all(|n| s.endpoints.iter().any(|e| &e.container == n && e.enforced))
                && s.endpoints.iter().any(|e| e.container == plain)
        },
    );
    let state = daemon.state();
    assert!(
        state
            .endpoints
            .iter()
            .any(|e| e.container == plain && !e.enforced),
        "a container in no group is seen but left alone"
    );

    let (back_ip, front_ip, guest_ip, plain_ip) = (
        env.ip(&back),
        env.ip(&front),
        env.ip(&guest),
        env.ip(&plain),
    );
    // Give the servers a moment; the allowed path proves they are up.
    let mut up = false;
    for _ in 0..20 {
        if env.tcp_ok(&front, back_ip, 8080) {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        up,
        "frontend -> backend:8080 must pass; daemon log:\n{}",
        daemon.log()
    );
    assert!(
        !env.tcp_ok(&front, back_ip, 9090),
        "backend:9090 is not allowed"
    );
    assert!(
        !env.tcp_ok(&guest, back_ip, 8080),
        "untrusted may not start connections"
    );
    assert!(
        !env.tcp_ok(&plain, back_ip, 8080),
        "unmanaged -> backend is denied by the backend"
    );
    assert!(
        env.tcp_ok(&back, front_ip, 8080),
        "backend -> frontend is allowed"
    );
    assert!(env.tcp_ok(&front, guest_ip, 8080), "untrusted is reachable");
    assert!(
        env.tcp_ok(&plain, front_ip, 8080),
        "unmanaged -> frontend is allowed"
    );
    assert!(
        env.tcp_ok(&front, plain_ip, 8080),
        "frontend -> unmanaged is allowed"
    );

    // Exactly 6 datagrams the policy denies, sent from inside the guest.
    udp_from_container(env.pid(&guest), SocketAddr::from((back_ip, 7777)), 6);
    let out = daemon.cli(&["stats", "--json"]);
    assert!(
        out.status.success(),
        "stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let flows = stats["flows"].as_array().unwrap();
    let row = flows
        .iter()
        .find(|f| f["proto"] == "udp" && f["port"] == 7777)
        .unwrap_or_else(|| panic!("no UDP row in {stats:#}"));
    assert_eq!(row["packets"], 6, "{row:#}");
    assert_eq!(row["src"], guest.as_str());
    assert_eq!(row["src_group"], "untrusted");
    assert_eq!(row["dst"], back.as_str());
    assert_eq!(row["dst_group"], "backend");
    assert_eq!(row["reason"], "default-deny");
    assert_eq!(row["direction"], "egress");
    // The denied HTTP attempts are listed too, named.
    assert!(flows
        .iter()
        .any(|f| f["src"] == front.as_str() && f["port"] == 9090 && f["reason"] == "default-deny"));
    assert!(flows
        .iter()
        .any(|f| f["src"] == plain.as_str() && f["dst"] == back.as_str()));

    // The human table names the containers as well.
    let table = daemon.cli(&["stats"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains(&guest) && text.contains("default-deny"),
        "{text}"
    );
}
