//! The example policies of `policies/`, each enforced by the real daemon on
//! real containers, with the full reachability matrix between the
//! scenario's containers checked against a matrix written here by hand
//! from the scenario's description (not derived from the compiler).
use netiso_testkit::scenario::{member, probe, Scenario, World};

const COMPOSE_PROJECT: &str = "com.docker.compose.project";
const COMPOSE_SERVICE: &str = "com.docker.compose.service";

#[test]
fn microservices_only_the_call_graph_passes() {
    let names = [
        "client",
        "gateway",
        "service1",
        "service2",
        "database1",
        "database2",
    ];
    let members = names
        .iter()
        .map(|&n| member(n, &[(COMPOSE_PROJECT, "shop"), (COMPOSE_SERVICE, n)], true))
        .collect();
    let ports = [443, 8080, 5432];
    let s = Scenario::start("microservices.toml", &[], members, &ports);
    let allowed = [
        ("client", "gateway", 443),
        ("gateway", "service1", 8080),
        ("gateway", "service2", 8080),
        ("service1", "database1", 5432),
        ("service2", "database2", 5432),
    ];
    s.check_matrix(&ports, |src, dst, port| allowed.contains(&(src, dst, port)));

    let out = s.explain(&[
        "--from",
        &s.get("service2").full,
        "--to",
        &s.get("database1").full,
        "--port",
        "5432/tcp",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("5432/tcp  DENY   denied by rule 6 (service2 -> database1, any)")
            && text.contains("service2 never reaches database1"),
        "{text}"
    );
}

#[test]
fn multi_tenant_tenants_apart_proxy_reaches_both() {
    let tenant = |n: &str| match n {
        "a-web" | "a-db" => Some('a'),
        "b-web" | "b-db" => Some('b'),
        _ => None,
    };
    let members = vec![
        member("a-web", &[("tenant", "a")], true),
        member("a-db", &[("tenant", "a")], true),
        member("b-web", &[("tenant", "b")], true),
        member("b-db", &[("tenant", "b")], true),
        member("proxy", &[("role", "proxy")], true),
    ];
    let ports = [8080, 5432];
    let s = Scenario::start("multi-tenant.toml", &[], members, &ports);
    s.check_matrix(&ports, |src, dst, port| {
        match (tenant(src), tenant(dst)) {
            // Inside a tenant: everything.
            (Some(a), Some(b)) => a == b,
            // The proxy reaches every tenant's web port, nothing else.
            (None, Some(_)) => port == 8080,
            // Nobody reaches the proxy from inside.
            _ => false,
        }
    });
}

#[test]
fn environments_dev_staging_production_apart() {
    let env = |n: &str| match n {
        "dev-1" | "dev-2" => Some("dev"),
        "stg-1" => Some("staging"),
        "prod-1" | "prod-2" => Some("production"),
        _ => None,
    };
    let members = vec![
        member("dev-1", &[("env", "dev")], true),
        member("dev-2", &[("env", "dev")], true),
        member("stg-1", &[("env", "staging")], true),
        member("prod-1", &[("env", "production")], true),
        // The other spelling: the group takes a set of values.
        member("prod-2", &[("env", "prod")], true),
        member("monitor", &[("role", "monitoring")], true),
    ];
    let ports = [8080, 9100];
    let s = Scenario::start("environments.toml", &[], members, &ports);
    s.check_matrix(&ports, |src, dst, port| match (env(src), env(dst)) {
        (Some(a), Some(b)) => a == b,
        // Monitoring scrapes metrics everywhere; nothing calls monitoring.
        (None, Some(_)) => port == 9100,
        _ => false,
    });
}

#[test]
fn enclave_reachable_from_billing_only_and_never_out() {
    let members = vec![
        member("vault", &[("zone", "enclave")], true),
        member("billing", &[("app", "billing")], true),
        // In no group: unmanaged, Docker's behaviour.
        member("web", &[], false),
    ];
    let ports = [8200, 8080];
    let world = World::new(8443);
    let s = Scenario::start("enclave.toml", &["secure"], members, &ports);
    s.check_matrix(&ports, |src, dst, port| match (src, dst) {
        ("billing", "vault") => port == 8200,
        (_, "vault") | ("vault", _) => false,
        _ => true,
    });

    // The world: billing and the unmanaged container get out (so the
    // route works), the vault never does.
    let out = |name: &str| {
        let r = s.get(name);
        (0..2).any(|_| probe(r.pid, world.ip, 8443))
    };
    assert!(
        out("billing"),
        "billing -> world {} must pass (audited)",
        world.ip
    );
    assert!(out("web"), "an unmanaged container reaches the world");
    assert!(!out("vault"), "the vault must never reach the world");

    // Billing's way out passed, and was recorded as audit.
    let stats = s.daemon.cli(&["stats", "--json"]);
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let flows = stats["flows"].as_array().expect("flows");
    let audited = flows.iter().any(|f| {
        f["reason"] == "audit" && f["port"] == 8443 && f["src"] == s.get("billing").full.as_str()
    });
    assert!(audited, "no audit row for billing -> world in {stats:#}");
    let denied = flows.iter().any(|f| {
        f["port"] == 8443
            && f["src"] == s.get("vault").full.as_str()
            && f["reason"] == "policy-deny"
    });
    assert!(denied, "no policy-deny row for vault -> world in {stats:#}");

    // explain agrees, for the test's world and any other outside address.
    let vault = s.get("vault").full.clone();
    let world_ip = world.ip.to_string();
    for to in [world_ip.as_str(), "198.18.0.5"] {
        let out = s.explain(&["--from", &vault, "--to", to, "--port", "8443/tcp"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("8443/tcp  DENY   denied by rule 2 (enclave -> world, any)")
                && text.contains("the enclave never talks to the outside"),
            "{text}"
        );
    }
    let out = s.explain(&[
        "--from",
        &s.get("billing").full,
        "--to",
        &world_ip,
        "--port",
        "8443",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("AUDIT  audited"), "{text}");
}

#[test]
fn shared_network_payment_db_answers_payments_only() {
    let payments = ["payments-api", "payments-worker-1"];
    let members = vec![
        member("payments-api", &[], true),
        member("payments-worker-1", &[], true),
        member("payments-db", &[], true),
        member("shop-web", &[], false),
        member("reporting", &[], false),
    ];
    let ports = [5432, 8080];
    let s = Scenario::start("shared-network.toml", &["shared"], members, &ports);
    s.check_matrix(&ports, |src, dst, port| match (src, dst) {
        (_, "payments-db") => payments.contains(&src) && port == 5432,
        // The database answers; it starts nothing.
        ("payments-db", _) => false,
        // The rest of the network is as Docker made it.
        _ => true,
    });
}
