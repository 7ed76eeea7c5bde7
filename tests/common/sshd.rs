//! A real sshd on 127.0.0.1, with its own host key, client keys and authorized_keys files, and the clients that
//! reach it (ssh, the stock sqlite3_rsync).

use super::{sqlite3_rsync_path, test_dir, SETUP_HINT};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";

/// A real sshd on 127.0.0.1, with its own host key, client keys and authorized_keys files.
pub struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Sshd {
    /// Starts sshd; `extra_config` is appended to its sshd_config (Match blocks and the like).
    pub fn start(extra_config: &str) -> Sshd {
        assert!(Path::new(SSHD).exists(), "{SSHD} is missing: {SETUP_HINT}");
        let dir = test_dir("sshd");
        let root = dir.path();
        std::fs::create_dir(root.join("authorized_keys")).unwrap();
        std::fs::set_permissions(root.join("authorized_keys"), std::fs::Permissions::from_mode(0o755)).unwrap();
        keygen(&root.join("host_ed25519"));
        std::fs::create_dir_all("/run/sshd").unwrap();
        for _attempt in 0..10 {
            let port = free_port();
            std::fs::write(root.join("sshd_config"), sshd_config(root, port, extra_config)).unwrap();
            let mut child = Command::new(SSHD)
                .args(["-D", "-f"])
                .arg(root.join("sshd_config"))
                .arg("-E")
                .arg(root.join("sshd.log"))
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    std::fs::write(root.join("ssh_config"), client_config(port)).unwrap();
                    return Sshd { dir, port, child };
                }
                if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break; // most likely another test took the port: try the next one
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("sshd did not start: {}", std::fs::read_to_string(root.join("sshd.log")).unwrap_or_default());
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// A new ed25519 client key: (private key path, public key line).
    pub fn new_client_key(&self, name: &str) -> (PathBuf, String) {
        let path = self.dir.path().join(format!("client_{name}"));
        keygen(&path);
        let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        (path, public.trim().to_owned())
    }

    /// Replaces the authorized_keys file sshd reads for `user`.
    pub fn set_authorized_keys(&self, user: &str, contents: &str) {
        let path = self.authorized_keys_path(user);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    pub fn authorized_keys_path(&self, user: &str) -> PathBuf {
        self.dir.path().join("authorized_keys").join(user)
    }

    /// `user`'s authorized_keys file, empty, theirs and 0600, for `evosync init --authorized-keys` to manage.
    pub fn empty_authorized_keys(&self, user: &str) -> PathBuf {
        let keys_file = self.authorized_keys_path(user);
        std::fs::write(&keys_file, "").unwrap();
        super::chown_to(&keys_file, user);
        std::fs::set_permissions(&keys_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        keys_file
    }

    /// An ssh program for `sqlite3_rsync --ssh`: ssh with this sshd's client config and `key`.
    pub fn ssh_wrapper(&self, key: &Path) -> PathBuf {
        let name = key.file_name().unwrap().to_string_lossy();
        let path = self.dir.path().join(format!("ssh-{name}"));
        if !path.exists() {
            let script = format!(
                "#!/bin/sh\nexec /usr/bin/ssh -F {} -i {} \"$@\"\n",
                self.dir.path().join("ssh_config").display(),
                key.display()
            );
            super::write_executable(&path, &script);
        }
        path
    }

    /// `ssh USER@127.0.0.1 'COMMAND'`, as the worker sync manager runs it.
    pub fn ssh(&self, key: &Path, user: &str, command: &str) -> Output {
        Command::new(self.ssh_wrapper(key))
            .arg(format!("{user}@127.0.0.1"))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `ssh` from another loopback source address.
    pub fn ssh_from(&self, key: &Path, user: &str, source: &str, command: &str) -> Output {
        Command::new(self.ssh_wrapper(key))
            .args(["-b", source])
            .arg(format!("{user}@127.0.0.1"))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The stock client exactly as the worker runs it: `sqlite3_rsync LOCAL USER@HOST:REMOTE [extra]`.
    pub fn sqlite3_rsync(&self, key: &Path, local: &Path, user: &str, remote: &str, extra: &[&str]) -> Output {
        Command::new(sqlite3_rsync_path())
            .arg(local)
            .arg(format!("{user}@127.0.0.1:{remote}"))
            .arg("--ssh")
            .arg(self.ssh_wrapper(key))
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sshd_config(root: &Path, port: u16, extra: &str) -> String {
    format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile none\n\
         AuthorizedKeysFile {keys}/%u\nStrictModes yes\nUsePAM no\nPermitRootLogin no\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
         AllowUsers evosync evosync-acme evosync-beta\nMaxStartups 64:30:128\nLogLevel VERBOSE\n{extra}\n",
        host_key = root.join("host_ed25519").display(),
        keys = root.join("authorized_keys").display(),
    )
}

fn client_config(port: u16) -> String {
    format!(
        "Host *\n  Port {port}\n  BatchMode yes\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n\
         UserKnownHostsFile /dev/null\n  GlobalKnownHostsFile /dev/null\n  LogLevel ERROR\n  ConnectTimeout 10\n\
         ControlMaster no\n"
    )
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "evosync-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "ssh-keygen {}", path.display());
}

pub(super) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
