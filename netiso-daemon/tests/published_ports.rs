//! Published ports (`docker run -p`), end to end with the real engine: a
//! container that reaches another through a port the host publishes for
//! it is judged as reaching that container, not the host. So a group that
//! lets `host` in (for the proxy and the world behind published ports)
//! does not thereby admit every container that may talk to the host.
//!
//! The port is published on the network's gateway address only, so nothing
//! outside the host can reach it; containers on the network reach it there
//! through docker-proxy (Docker's default) or, without the proxy, through
//! the engine's NAT rules: both paths must give the same verdicts.

use netiso_testkit::docker::{tcp_servers, DockerEnv};
use netiso_testkit::hostile::{reason_counts, Extra};
use netiso_testkit::ops::write_policy;
use netiso_testkit::{sh, DaemonProc, NetNs};

const POLICY: &str = r#"
[groups.web]
labels = { "netiso.test" = "@TAG@", role = "web" }
ingress = "deny"

[groups.friend]
labels = { "netiso.test" = "@TAG@", role = "friend" }

[groups.stranger]
labels = { "netiso.test" = "@TAG@", role = "stranger" }

[[rules]]
from = "host"
to = "web"
ports = ["8080/tcp"]
action = "allow"
description = "the host's proxy, and the world through the published port"

[[rules]]
from = "friend"
to = "web"
ports = ["8080/tcp"]
action = "allow"
"#;

fn text(out: std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_published_port_is_judged_as_the_container_behind_it() {
    let env = DockerEnv::new();
    let mut extra = Extra::new(&env);
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path(), &env.tag, POLICY);
    let gateway = text(sh(&format!(
        "docker network inspect -f '{{{{(index .IPAM.Config 0).Gateway}}}}' {}",
        env.network
    )));
    let tag = env.tag.clone();
    let label = |role: &'static str| [("netiso.test", tag.as_str()), ("role", role)];
    let publish = format!("-p {gateway}::8080");
    let web = extra.run("web", &label("web"), &[&publish], &tcp_servers(&[8080]));
    let friend = extra.run("friend", &label("friend"), &[], "exec sleep 3600");
    let stranger = extra.run("stranger", &label("stranger"), &[], "exec sleep 3600");
    let host_port: u16 = text(sh(&format!("docker port {web} 8080/tcp")))
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the published host port");
    let mut daemon = DaemonProc::start(policy);
    let names = [web.clone(), friend.clone(), stranger.clone()];
    daemon.wait_for("the three containers enforced", |s| {
        names
            .iter()
            .all(|c| s.endpoints.iter().any(|e| &e.container == c && e.enforced))
    });
    let gw: std::net::Ipv4Addr = gateway.parse().expect("gateway address");
    let web_ip = env.ip(&web);

    // The friend reaches web directly and through the host's port.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !env.tcp_ok(&friend, web_ip, 8080) {
        assert!(
            std::time::Instant::now() < end,
            "friend -> web:8080 directly:\n{}",
            daemon.log()
        );
    }
    assert!(
        env.tcp_ok(&friend, gw, host_port),
        "friend -> web through the published port {gateway}:{host_port}:\n{}",
        daemon.log()
    );
    // The stranger reaches neither: web lets the host in, but reaching
    // web through the host is reaching web.
    let before = reason_counts(&daemon);
    assert!(!env.tcp_ok(&stranger, web_ip, 8080), "stranger -> web:8080");
    assert!(
        !env.tcp_ok(&stranger, gw, host_port),
        "stranger -> web through the published port {gateway}:{host_port}"
    );
    let after = reason_counts(&daemon);
    let denied = after.get("default-deny").copied().unwrap_or(0)
        - before.get("default-deny").copied().unwrap_or(0);
    assert!(
        denied >= 2,
        "both attempts dropped as default-deny: {before:?} -> {after:?}"
    );
    // `netiso explain` answers as the kernel judged: through the host's
    // port is to web, allowed for the friend, denied for the stranger.
    let explain = |from: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_netiso"))
            .args(["explain", "--from", from, "--to", "host", "--port"])
            .arg(format!("{host_port}/tcp"))
            .arg("--state-dir")
            .arg(daemon.state_dir.path())
            .output()
            .expect("run netiso explain");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let said = explain(&friend);
    assert!(
        said.contains("ALLOW")
            && said.contains(&format!("publishes {host_port}/tcp for container {web}")),
        "{said}"
    );
    let said = explain(&stranger);
    assert!(
        said.contains("DENY")
            && said.contains(&format!("publishes {host_port}/tcp for container {web}")),
        "{said}"
    );
    // From outside the host the engine's NAT rules deliver the connection:
    // web's veth sees the real sender, judged as `world` (which web does
    // not let in). "Outside" is a namespace of this test behind a routed
    // link with an address from 198.18.0.0/15, routed to the gateway only.
    let world = NetNs::new("world");
    let n = std::process::id() % 250 + 1;
    let host_if = netiso_testkit::unique("ntw");
    struct Link(String);
    impl Drop for Link {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.0])
                .output();
        }
    }
    sh(&format!(
        "ip link add {host_if} type veth peer name eth0 netns {}",
        world.name
    ));
    let _link = Link(host_if.clone());
    sh(&format!(
        "ip addr add 198.19.{n}.1/30 dev {host_if} && ip link set {host_if} up"
    ));
    world.sh(&format!(
        "ip addr add 198.19.{n}.2/30 dev eth0 && ip link set eth0 up \
         && ip route add {gateway}/32 via 198.19.{n}.1"
    ));
    let before = reason_counts(&daemon);
    let to = std::net::SocketAddr::from((gw, host_port));
    let reached = world.run(move || {
        std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(2)).is_ok()
    });
    assert!(
        !reached,
        "world -> web through the published port (NAT path)"
    );
    let after = reason_counts(&daemon);
    let denied = after.get("default-deny").copied().unwrap_or(0)
        - before.get("default-deny").copied().unwrap_or(0);
    assert!(
        denied >= 1,
        "the NAT path is judged on web's veth as world -> web: {before:?} -> {after:?}\n{}",
        daemon.log()
    );
    let table = String::from_utf8_lossy(&daemon.cli(&["stats"]).stdout).to_string();
    let world_src = format!("198.19.{n}.2");
    assert!(
        table.lines().any(|l| l.contains(&world_src)
            && l.contains("world")
            && l.contains(" web ")
            && l.contains("8080")
            && l.contains("ingress")),
        "a drop of world -> web:8080 on web's veth (after NAT): {table}"
    );

    // The drop names web as the destination of the published-port attempt.
    let stats = daemon.cli(&["stats", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats --json");
    let shown = rows.to_string();
    assert!(
        shown.contains(&host_port.to_string()),
        "a row for the published port: {shown}"
    );
}
