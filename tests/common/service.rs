//! A running `evosync serve`, stopped on drop.

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
    /// Starts `evosync serve` for `config` (whose `listen` must name `port`) and waits until it answers. Its log
    /// lines go to `serve.log` beside the config (see `log`).
    pub fn start(config: &Path, port: u16) -> Service {
        let log = config.with_file_name(format!("serve-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_evosync"))
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
        service
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the service has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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
