fn main() -> std::process::ExitCode {
    netiso_daemon::cli::main()
}
