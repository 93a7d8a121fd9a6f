//! Real Docker resources for end-to-end tests, created through the docker
//! CLI with unique names and removed on drop.
use std::process::Command;

use crate::{sh, unique};

pub fn image() -> String {
    std::env::var("NETISO_TEST_IMAGE").unwrap_or_else(|_| "netiso-busybox:test".into())
}

/// Fails the test with a clear message unless an engine and the test
/// image are there.
pub fn require_docker() {
    crate::require_root();
    let ok = Command::new("docker")
        .args(["image", "inspect", &image()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "Docker engine or test image {} not available: run `cargo xtask setup` (it starts dockerd and imports the image)",
        image()
    );
}

/// A user-defined bridge network and the containers started on it.
pub struct DockerEnv {
    pub network: String,
    pub tag: String,
    containers: Vec<String>,
}

impl DockerEnv {
    pub fn new() -> Self {
        Self::with_network_args("").unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`new`](Self::new), with extra `docker network create`
    /// arguments (`--ipv6 --subnet ...`); the engine's complaint (an
    /// overlapping subnet, say) comes back as the error.
    pub fn with_network_args(args: &str) -> Result<Self, String> {
        require_docker();
        let tag = unique("e2e");
        let network = format!("netiso-{tag}");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker network create --driver bridge {args} {network}"
            ))
            .output()
            .expect("spawn sh");
        if !out.status.success() {
            return Err(format!(
                "docker network create {args}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self {
            network,
            tag,
            containers: Vec::new(),
        })
    }

    /// Starts a container named `<name>-<tag>` on the network with the given
    /// labels, running `script` under sh. Returns the full name.
    pub fn run(&mut self, name: &str, labels: &[(&str, &str)], script: &str) -> String {
        let full = format!("{name}-{}", self.tag);
        let mut cmd = format!("docker run -d --name {full} --network {}", self.network);
        for (k, v) in labels {
            cmd.push_str(&format!(" --label {k}={v}"));
        }
        cmd.push_str(&format!(" {} sh -c '{script}'", image()));
        self.containers.push(full.clone());
        sh(&cmd);
        full
    }

    pub fn ip(&self, container: &str) -> std::net::Ipv4Addr {
        let out = sh(&format!(
            "docker inspect -f '{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}' {container}",
            self.network
        ));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("container IP")
    }

    pub fn pid(&self, container: &str) -> u32 {
        let out = sh(&format!(
            "docker inspect -f '{{{{.State.Pid}}}}' {container}"
        ));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("pid")
    }

    /// `docker exec` of a shell snippet; true when it exits 0.
    pub fn exec_ok(&self, container: &str, script: &str) -> bool {
        exec(container, script).0
    }

    /// Whether `from` gets the greeting of a [`tcp_servers`] port at
    /// `to_ip:port` (busybox nc, 2 s timeout). The greeting is checked, not
    /// nc's exit code, which is 0 on a connect timeout.
    pub fn tcp_ok(&self, from: &str, to_ip: std::net::Ipv4Addr, port: u16) -> bool {
        self.exec_ok(
            from,
            &format!("nc -w 2 {to_ip} {port} </dev/null | grep -q netiso-ok"),
        )
    }
}

impl Drop for DockerEnv {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

/// `docker exec` of a shell snippet in any container: whether it exited
/// 0, and its output (stdout, then stderr).
pub fn exec(container: &str, script: &str) -> (bool, String) {
    match Command::new("docker")
        .args(["exec", container, "sh", "-c", script])
        .output()
    {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, format!("docker exec: {e}")),
    }
}

/// A shell snippet that greets every TCP connection on each port with
/// `netiso-ok`, until the container is removed. (busybox wget crashes in
/// the static busybox image, so nc stands in for a server.)
pub fn tcp_servers(ports: &[u16]) -> String {
    let mut s = String::new();
    for p in ports {
        s.push_str(&format!("nc -ll -p {p} -e echo netiso-ok & "));
    }
    s.push_str("exec sleep 3600");
    s
}
