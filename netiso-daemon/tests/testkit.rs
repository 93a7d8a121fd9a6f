//! The test kit finds the `netiso` binary cargo built for these tests:
//! `netiso_testkit::netiso_bin` derives it from the running test (a
//! library has no `CARGO_BIN_EXE_netiso`), so every daemon the tests start
//! is this build's. Needs neither root nor Docker.

#[test]
fn testkit_runs_the_binary_cargo_built_for_the_tests() {
    assert_eq!(
        netiso_testkit::netiso_bin(),
        std::path::Path::new(env!("CARGO_BIN_EXE_netiso"))
            .canonicalize()
            .unwrap()
            .as_path()
    );
}
