//! The benchmark harness (`cargo xtask bench`) with tiny counts, so that it
//! cannot rot: every part runs for real (eBPF, namespaces, iptables,
//! nftables, iperf3, the daemon against Docker) and writes its report. No
//! timing is asserted: benchmarks report, they do not judge.
use netiso_testkit::bench;

#[test]
fn bench_harness_runs_every_part_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let opts = bench::Options::smoke(dir.path().to_path_buf());
    let (report, md_path) = bench::run(&opts).expect("bench harness");
    let ids: Vec<&str> = report
        .sections
        .iter()
        .flat_map(|s| s.figures.iter().map(|f| f.id.as_str()))
        .collect();
    for want in [
        "program.empty",
        "program.established.tcp4.r1.e2",
        "program.first_allowed.udp6.r100.e100",
        "program.first_denied.tcp6.r1.e2",
        "program.established.scaling",
        "reload.inprocess.total",
        "traffic.udp_pps.netiso",
        "traffic.tcp_cps.iptables",
        "traffic.tcp_bulk.nftables",
        "control.start_to_enforced",
        "control.reload",
        "control.idle.rss.n_big",
    ] {
        assert!(ids.contains(&want), "figure {want} missing; have {ids:?}");
    }
    for s in &report.sections {
        for f in &s.figures {
            assert!(
                f.value.median.is_finite() && f.value.n > 0,
                "{}: no value ({:?})",
                f.id,
                f.value
            );
        }
    }
    // Every figure that has a target says whether it was met.
    assert!(report.targets().len() >= 9, "{:?}", report.targets().len());
    let md = std::fs::read_to_string(&md_path).unwrap();
    assert!(md.contains("## Targets") && md.contains("Program cost"));
    let json_path = md_path.with_extension("json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json_path).unwrap()).unwrap();
    assert_eq!(json["smoke"], true);
    assert!(json["conditions"]["kernel"]
        .as_str()
        .is_some_and(|k| !k.is_empty()));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("latest.md")).unwrap(),
        md
    );
}

#[test]
fn bench_statistics_and_timestamps() {
    use bench::conditions::{parse_rfc3339_utc_ns, utc_timestamp};
    use bench::stats::{median, percentile, summary};
    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    assert_eq!(percentile(&[5.0, 1.0, 4.0, 2.0, 3.0], 99.0), 5.0);
    assert_eq!(percentile(&[5.0, 1.0, 4.0, 2.0, 3.0], 50.0), 3.0);
    let s = summary(&[2.0, 8.0, 4.0]);
    assert_eq!((s.median, s.min, s.max, s.n), (4.0, 2.0, 8.0, 3));
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_779_238_923);
    assert_eq!(utc_timestamp(t), "2026-05-20T01:02:03Z");
    assert_eq!(
        parse_rfc3339_utc_ns("2026-05-20T01:02:03.123456789Z"),
        Some(1_779_238_923_123_456_789)
    );
    assert_eq!(
        parse_rfc3339_utc_ns("2026-05-20T01:02:03.5Z"),
        Some(1_779_238_923_500_000_000)
    );
}
