//! evosync: the administrator's command line and the HTTP service (`evosync serve`).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    evosync::cli::main()
}
