fn main() -> std::process::ExitCode {
    callhook::cli::run()
}
