//! evosync-gate: what sshd runs instead of the worker's command (authorized_keys `command=` or `ForceCommand`).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    evosync::gate::main()
}
