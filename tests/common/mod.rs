//! The test rig: a real OpenSSH sshd on a loopback port, the real stock sqlite3_rsync, and SQLite files shaped like
//! the workers'. Each test gets its own folders and port. `scripts/setup-test-env.sh` prepares the machine.
#![allow(dead_code)] // each test file uses its own part of the rig

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";
const SETUP_HINT: &str = "run scripts/setup-test-env.sh (as root) first";

/// Where the stock client lives: `EVOSYNC_TEST_SQLITE3_RSYNC`, else /usr/local/bin/sqlite3_rsync.
pub fn sqlite3_rsync_path() -> PathBuf {
    let path = std::env::var_os("EVOSYNC_TEST_SQLITE3_RSYNC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/sqlite3_rsync"));
    assert!(path.exists(), "{} is missing: {SETUP_HINT}", path.display());
    path
}

/// A temp folder, mode 0755, whose every parent is root-owned and not writable by others, as sshd's StrictModes
/// (and its checks of AuthorizedKeysCommand) demand: under the target dir when that holds there, else under
/// /var/lib/evosync-tests (a clone under /tmp, say, has a world-writable parent).
pub fn test_dir(name: &str) -> tempfile::TempDir {
    let base = safe_base();
    let dir = tempfile::Builder::new().prefix(&format!("{name}-")).tempdir_in(&base).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn safe_base() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let _ = std::fs::create_dir_all(&target);
    if path_is_safe(&target) {
        return target;
    }
    let fallback = PathBuf::from("/var/lib/evosync-tests");
    std::fs::create_dir_all(&fallback).unwrap();
    std::fs::set_permissions(&fallback, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(path_is_safe(&fallback), "{} must be root-owned and not writable by others", fallback.display());
    fallback
}

/// Every folder from `path` up to `/` is owned by root and writable by nobody else.
fn path_is_safe(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else { return false };
    path.ancestors()
        .all(|folder| std::fs::metadata(folder).map(|m| m.uid() == 0 && m.mode() & 0o022 == 0).unwrap_or(false))
}

/// A copy of `binary` in a folder sshd accepts for AuthorizedKeysCommand (root-owned all the way up).
pub fn safe_copy(binary: &Path, dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = bin.join(binary.file_name().unwrap());
    std::fs::copy(binary, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// Gives `path` (recursively, symlinks themselves) to a test account.
pub fn chown_to(path: &Path, user: &str) {
    require_account(user);
    let status = Command::new("chown").args(["-R", "-h", &format!("{user}:evosync")]).arg(path).status().unwrap();
    assert!(status.success(), "chown {user} {}", path.display());
}

pub fn require_account(user: &str) {
    let known = Command::new("getent").args(["passwd", user]).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(known, "the test account '{user}' does not exist: {SETUP_HINT}");
}

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
            static WRITES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let partial = path.with_extension(format!("partial-{n}"));
            std::fs::write(&partial, script).unwrap();
            std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&partial, &path).unwrap();
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ---- SQLite files shaped like the workers' ----

fn open(path: &Path) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(path).unwrap();
    db.busy_timeout(Duration::from_secs(30)).unwrap();
    db
}

/// Pseudo-random bytes (xorshift), so pages differ and do not compress.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A WAL database like the workers': `TABLE (id TEXT PRIMARY KEY, data BLOB)` plus `metadata(key, value)`.
pub fn make_db(path: &Path, table: &str, rows: usize, blob_bytes: usize) {
    let db = open(path);
    db.pragma_update(None, "page_size", 4096).unwrap();
    db.pragma_update(None, "journal_mode", "wal").unwrap();
    db.pragma_update(None, "synchronous", "normal").unwrap();
    db.execute_batch(&format!(
        "CREATE TABLE {table} (id TEXT PRIMARY KEY, data BLOB);\n\
         CREATE TABLE metadata (key TEXT PRIMARY KEY, value TEXT);\n\
         INSERT INTO metadata VALUES ('creationDate', '2026-11-25T00:00:00Z');"
    ))
    .unwrap();
    drop(db);
    insert_rows(path, table, rows, blob_bytes);
}

/// Appends `rows` rows with increasing ULID-like ids, as a worker does.
pub fn insert_rows(path: &Path, table: &str, rows: usize, blob_bytes: usize) {
    let mut db = open(path);
    let tx = db.transaction().unwrap();
    let start: i64 = tx.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap();
    {
        let mut insert = tx.prepare(&format!("INSERT OR REPLACE INTO {table} (id, data) VALUES (?1, ?2)")).unwrap();
        for n in start..start + rows as i64 {
            insert.execute(rusqlite::params![format!("01KFYA{n:020}"), noise(n as u64, blob_bytes)]).unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Rewrites the data of the first `rows` rows.
pub fn update_rows(path: &Path, table: &str, rows: usize) {
    let db = open(path);
    db.execute(
        &format!("UPDATE {table} SET data = randomblob(length(data)) WHERE id IN (SELECT id FROM {table} ORDER BY id LIMIT ?1)"),
        [rows as i64],
    )
    .unwrap();
}

/// Row count and a hash of every table's rows in order: equal digests, equal contents.
pub fn db_digest(path: &Path) -> String {
    read_as_owner(path, |db| {
        let mut hasher = DefaultHasher::new();
        let mut rows = 0u64;
        let tables: Vec<String> = db
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for table in tables {
            table.hash(&mut hasher);
            let mut statement = db.prepare(&format!("SELECT * FROM {table} ORDER BY 1")).unwrap();
            let columns = statement.column_count();
            let mut cursor = statement.query([]).unwrap();
            while let Some(row) = cursor.next().unwrap() {
                rows += 1;
                for i in 0..columns {
                    format!("{:?}", row.get_ref(i).unwrap()).hash(&mut hasher);
                }
            }
        }
        format!("{rows} rows, {:016x}", hasher.finish())
    })
}

/// `PRAGMA integrity_check` says ok.
pub fn integrity_ok(path: &Path) -> bool {
    read_as_owner(path, |db| db.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)).unwrap() == "ok")
}

/// Reads a database and leaves any -wal/-shm it made owned like the database, so a replica stays writable by the
/// gate account that owns it.
fn read_as_owner<T>(path: &Path, read: impl FnOnce(&rusqlite::Connection) -> T) -> T {
    assert!(path.exists(), "{} does not exist", path.display());
    let meta = std::fs::metadata(path).unwrap();
    let result = {
        let db = open(path);
        read(&db)
    };
    for suffix in ["-wal", "-shm"] {
        let companion = PathBuf::from(format!("{}{suffix}", path.display()));
        if companion.exists() {
            let _ = std::os::unix::fs::chown(&companion, Some(meta.uid()), Some(meta.gid()));
        }
    }
    result
}

// ---- HTTP over a real socket, without a client library ----

/// One HTTP/1.1 request on a fresh connection; returns (status, headers, body).
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP response");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut body = response[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else { return out };
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
}

/// `evosync --config CONFIG --json ARGS`, parsed.
pub fn evosync_json(config: &Path, args: &[&str]) -> (bool, serde_json::Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_evosync"))
        .arg("--config")
        .arg(config)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let value = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    (output.status.success(), value, String::from_utf8_lossy(&output.stderr).into_owned())
}

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
