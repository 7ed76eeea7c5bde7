//! Whether the configured sqlite3_rsync is new enough to be handed a party's channel.
//!
//! Before SQLite 3.53.4 the replica side trusted the page size of an ORIGIN_BEGIN it answered with a protocol
//! counter-offer (`readPow2` accepted up to 2^31, and ORIGIN_PAGE read that many bytes into a 64 KiB stack buffer), so a
//! hostile origin could overflow the replica's stack with a second ORIGIN_BEGIN. `sqlite3_rsync --version` prints
//! SQLite's source id (`DATE TIME HASH`), not a version number, so the check compares the source date with that of the
//! first release known to be fixed.
//!
//! The answer is cached in `state_dir/sqlite3_rsync.version`, keyed by the binary's device, inode, mtime and size, and
//! replaced atomically (temp file, rename), so the gate runs the binary once per build rather than once per push.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The first release whose replica checks the page size of every ORIGIN_BEGIN.
pub const MIN_RELEASE: &str = "3.53.4";
/// Its source date: `sqlite3_rsync --version` of 3.53.4 starts with it.
pub const MIN_SOURCE_DATE: &str = "2026-07-24";
/// The cache file's name in state_dir.
pub const CACHE_FILE: &str = "sqlite3_rsync.version";
/// How long `--version` may take before the binary is taken as unusable.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error(
        "{program} is sqlite3_rsync of {date} (source id {source_id}); evosync needs SQLite {MIN_RELEASE} \
         ({MIN_SOURCE_DATE}) or newer, whose replica checks the page size of every ORIGIN_BEGIN: install it with \
         scripts/build-sqlite3-rsync.sh"
    )]
    TooOld { program: PathBuf, date: String, source_id: String },
    #[error("{program} --version printed '{printed}', not SQLite's source id (DATE TIME HASH); is it sqlite3_rsync?")]
    Unrecognised { program: PathBuf, printed: String },
    #[error("cannot run {program} --version: {reason}")]
    Unrunnable { program: PathBuf, reason: String },
}

/// The source date in `sqlite3_rsync --version`'s output, when it is SQLite's source id. Pure.
pub fn source_date(version_output: &str) -> Option<&str> {
    let date = version_output.split_whitespace().next()?;
    let bytes = date.as_bytes();
    let shaped = bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| if i == 4 || i == 7 { *b == b'-' } else { b.is_ascii_digit() });
    shaped.then_some(date)
}

/// Whether a build of this source id may run. Pure.
pub fn check_source_id(program: &Path, source_id: &str) -> Result<(), VersionError> {
    let source_id = source_id.trim();
    let Some(date) = source_date(source_id) else {
        return Err(VersionError::Unrecognised {
            program: program.to_owned(),
            printed: source_id.chars().take(80).collect(),
        });
    };
    // ISO dates compare as text.
    if date < MIN_SOURCE_DATE {
        return Err(VersionError::TooOld {
            program: program.to_owned(),
            date: date.to_owned(),
            source_id: source_id.to_owned(),
        });
    }
    Ok(())
}

/// Checks `program`, from the cache when it describes this very build, else by running `program --version` (and
/// then caching the answer when `state_dir` is writable).
pub fn check(program: &Path, state_dir: &Path) -> Result<(), VersionError> {
    let source_id = source_id(program, state_dir)?;
    check_source_id(program, &source_id)
}

/// The source id of `program`, cached by its identity.
pub fn source_id(program: &Path, state_dir: &Path) -> Result<String, VersionError> {
    let unrunnable = |reason: String| VersionError::Unrunnable { program: program.to_owned(), reason };
    let (dev, ino, mtime, mtime_nsec, size) =
        crate::fs::sys::file_identity(program).map_err(|e| unrunnable(e.to_string()))?;
    let key = format!("{} {dev} {ino} {mtime} {mtime_nsec} {size}", program.display());
    let cache = state_dir.join(CACHE_FILE);
    if let Some(cached) = read_cache(&cache, &key) {
        return Ok(cached);
    }
    let source_id = run_version(program).map_err(unrunnable)?;
    if source_date(&source_id).is_some() {
        // A host whose gate cannot write state_dir checks every time; that costs one run of the binary.
        let _ = write_cache(&cache, &key, &source_id);
    }
    Ok(source_id)
}

/// The cached source id when the cache's key is `key`.
fn read_cache(cache: &Path, key: &str) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(cache).ok()?.take(4096).read_to_string(&mut text).ok()?;
    let mut lines = text.lines();
    (lines.next()? == key).then(|| lines.next().map(str::to_owned)).flatten()
}

fn write_cache(cache: &Path, key: &str, source_id: &str) -> std::io::Result<()> {
    let partial = cache.with_extension(format!("partial-{}", std::process::id()));
    let written = (|| {
        // No fsync: after a crash the file is whole, empty or gone, and anything but a whole entry for this very
        // build only means the binary is asked again.
        let mut file = std::fs::File::create(&partial)?;
        writeln!(file, "{key}\n{source_id}")?;
        std::fs::rename(&partial, cache)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

/// Runs `program --version` with a clean environment and a deadline; its first line.
fn run_version(program: &Path) -> Result<String, String> {
    let mut child = Command::new(program)
        .arg("--version")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + VERSION_TIMEOUT;
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(_) => break,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {} s", VERSION_TIMEOUT.as_secs()));
            }
            None => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    let mut printed = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = stdout.take(4096).read_to_string(&mut printed);
    }
    Ok(printed.lines().next().unwrap_or_default().trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_date_decides() {
        let program = Path::new("/usr/local/bin/sqlite3_rsync");
        let fixed = "2026-07-24 19:02:57 bf7c7f30031888f4e796e429ab3978879485813aaca6f641c7b33e4e09459bcc";
        assert!(check_source_id(program, fixed).is_ok());
        assert!(check_source_id(program, "2027-01-02 00:00:00 abcdef").is_ok());
        let old = "2026-04-09 11:41:47 4d2c3b5d9ca6ca6d2e2a0c3e8d4f7a1b0c9e8d7f6a5b4c3d2e1f0a9b8c7d6e5f";
        let error = check_source_id(program, old).unwrap_err().to_string();
        assert!(
            error.contains("of 2026-04-09") && error.contains("3.53.4") && error.contains("build-sqlite3-rsync"),
            "{error}"
        );
        let error = check_source_id(program, "rsync  version 3.2.7  protocol version 31").unwrap_err().to_string();
        assert!(error.contains("not SQLite's source id"), "{error}");
        assert!(source_date("2026-7-24 x").is_none());
    }
}
