//! A running `evosync serve`, stopped on drop, and what the tests read of it from `/proc`: its memory and its open
//! sockets.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::sshd::free_port;

/// A running `evosync serve`, stopped on drop.
pub struct Service {
    pub port: u16,
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Starts `evosync serve` for `config` (whose `listen` must name `port`) as the `evosync` account with that
    /// account's groups, as `systemd/evosync.service` runs it, and waits until it answers. Its log lines go to
    /// `serve-PORT.log` beside the config (see `log`).
    pub fn start(config: &Path, port: u16) -> Service {
        Service::start_as_service_account(config, port)
    }

    /// As `start`: the service as its own account.
    pub fn start_as_service_account(config: &Path, port: u16) -> Service {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=evosync", "--regid=evosync", "--init-groups", env!("CARGO_BIN_EXE_evosync")]);
        Service::launch(config, port, command)
    }

    /// As root, which no deployment does: for a test that needs it, saying why in `why`.
    pub fn start_as_root(config: &Path, port: u16, why: &str) -> Service {
        assert!(!why.is_empty(), "say why this test runs the service as root");
        Service::launch(config, port, Command::new(env!("CARGO_BIN_EXE_evosync")))
    }

    /// As `start_as_service_account`, with `env` set for the service too (`EVOSYNC_TEST_KILL_AT`, say).
    pub fn start_as_service_account_with(config: &Path, port: u16, env: &[(&str, &str)]) -> Service {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=evosync", "--regid=evosync", "--init-groups", env!("CARGO_BIN_EXE_evosync")]);
        command.envs(env.iter().copied());
        Service::launch(config, port, command)
    }

    /// kill -9, and waits until it is gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `within` for it to exit on its own; `None` while it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn launch(config: &Path, port: u16, mut command: Command) -> Service {
        let log = config.with_file_name(format!("serve-{port}.log"));
        let child = command
            .arg("--config")
            .arg(config)
            .arg("serve")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut service = Service { port, child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(service.child.try_wait().unwrap().is_none(), "evosync serve exited");
            assert!(Instant::now() < deadline, "evosync serve did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The probe that answered is closed on our side at once and on the service's a moment later: wait for that,
        // so that what a test counts of the service's sockets starts from its listeners alone.
        while service.connections_on(port, &["01", "08"]) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        service
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the service has logged so far.
    /// Waits until the service's log holds `needle`; panics with the log after `within`.
    pub fn wait_for_log(&self, needle: &str, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        while !self.log().contains(needle) {
            assert!(std::time::Instant::now() < deadline, "no {needle:?} in the service's log:\n{}", self.log());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid()))
    }

    /// The resident memory now, in MiB; also resets the peak (`VmHWM`) to it where the kernel lets us (root).
    pub fn rss_mib_resetting_peak(&self) -> f64 {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
        self.status_kib("VmRSS") as f64 / 1024.0
    }

    /// The peak resident memory since the last reset, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_kib("VmHWM") as f64 / 1024.0
    }

    /// TCP connections the service holds open (established) on `port`, its own listener's port.
    pub fn established_on(&self, port: u16) -> usize {
        self.connections_on(port, &["01"])
    }

    /// Connections on the service's `port` in one of the kernel's `states` (hex, as `/proc/net/tcp` writes them:
    /// `01` established, `08` closed by the client and not yet by the service).
    fn connections_on(&self, port: u16, states: &[&str]) -> usize {
        let mut count = 0;
        for table in ["tcp", "tcp6"] {
            let Ok(text) = std::fs::read_to_string(format!("/proc/{}/net/{table}", self.pid())) else { continue };
            for line in text.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port =
                    fields.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
                if local_port == Some(port) && fields.get(3).is_some_and(|state| states.contains(state)) {
                    count += 1;
                }
            }
        }
        count
    }

    /// Sockets among the service's open file descriptors (its listeners included).
    pub fn open_sockets(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|fds| {
                fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                    .filter(|target| target.to_string_lossy().starts_with("socket:"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// SIGTERM, then waits for the exit (up to `within`); `None` when it did not exit in time.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_loopback_port() -> u16 {
    free_port()
}
