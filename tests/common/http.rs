//! HTTP over a real socket, without a client library (one request per connection, or kept alive), and the `evosync`
//! command line as JSON.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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

/// A keep-alive HTTP/1.1 client: one request at a time on one connection.
pub struct KeepAlive {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl KeepAlive {
    pub fn connect(port: u16) -> std::io::Result<KeepAlive> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(KeepAlive { stream, buffer: Vec::new() })
    }

    /// GET `path` with `headers`; the answer's status.
    pub fn get(&mut self, path: &str, headers: &str) -> std::io::Result<u16> {
        use std::io::Write;
        // One write: a request in pieces would wait on Nagle's algorithm for the server's delayed ACK.
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        self.stream.write_all(request.as_bytes())?;
        let end = loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buffer[..end]).to_ascii_lowercase();
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while self.buffer.len() < end + 4 + length {
            self.fill()?;
        }
        self.buffer.drain(..end + 4 + length);
        Ok(status)
    }

    fn fill(&mut self) -> std::io::Result<()> {
        use std::io::Read;
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk)? {
            0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                self.buffer.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }
}

/// `evosync init` of a central in `root`: `replicas/`, `policies/` and `state/` under it, the real sqlite3_rsync and
/// gate, the service on `127.0.0.1:port`, and `extra` arguments (`--authorized-keys`, `--catalog-root`, …). Writes
/// `root/evosync.yaml` and returns its path and what `init` said (the admin token among it).
pub fn init_central(root: &Path, port: u16, extra: &[&str]) -> (PathBuf, serde_json::Value) {
    let config = root.join("evosync.yaml");
    let path = |name: &str| root.join(name).display().to_string();
    let (replicas, policies, state) = (path("replicas"), path("policies"), path("state"));
    let rsync = super::sqlite3_rsync_path().display().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "init",
        "--replica-root",
        &replicas,
        "--policies-dir",
        &policies,
        "--state-dir",
        &state,
        "--sqlite3-rsync",
        &rsync,
        "--gate",
        env!("CARGO_BIN_EXE_evosync-gate"),
        "--listen",
        &listen,
    ];
    args.extend_from_slice(extra);
    let (ok, said_json, said) = evosync_json(&config, &args);
    assert!(ok, "evosync init: {said}");
    (config, said_json)
}
