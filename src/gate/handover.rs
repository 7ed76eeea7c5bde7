//! Hand-over: the gate runs sqlite3_rsync on the SSH channel itself (the child inherits stdin and stdout, so no byte
//! of the sync passes through the gate), holds the locks for as long as it runs, passes SIGHUP/SIGTERM/SIGINT on,
//! and stops it at the wall-clock limit. The child works in its run folder, entered by the descriptor confinement
//! proved, under its file size, memory, Landlock and seccomp limits.

use super::memory::ChildMemory;
use crate::fs::locks;
use crate::fs::sandbox::Sandbox;
use crate::fs::sys::{self, ChildState, Signal};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// After the wall clock runs out: SIGTERM, then this long before SIGKILL.
const KILL_GRACE_SECONDS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error(
        "another push of {what}, or the central host's check and copy of the last one for its readers, is still \
         running; try again later (waited {waited}s)"
    )]
    ReplicaBusy { what: String, waited: u64 },
    #[error(
        "party '{party}' already runs {max} syncs at once (max_concurrent_syncs); try again later (waited {waited}s)"
    )]
    PartyBusy { party: String, max: u32, waited: u64 },
    #[error("cannot use the lock file {path}: {source} (state_dir must be writable by the gate's account)")]
    LockFile { path: PathBuf, source: std::io::Error },
    #[error("cannot start {program}: {source}")]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("lost track of the sync process: {0}")]
    Wait(nix::errno::Errno),
}

/// Held for the whole sync: one push per replica, at most `max_concurrent_syncs` per party.
pub struct Locks {
    _replica: locks::Held,
    _slot: locks::Held,
}

impl Locks {
    pub fn acquire(
        locks_dir: &Path,
        party: &str,
        run: &str,
        database: &str,
        max_slots: u32,
        wait: Duration,
    ) -> Result<Locks, HandoverError> {
        let file_error = |e: locks::LockFileError| HandoverError::LockFile { path: e.path, source: e.source };
        let party_dir = locks::party_dir(locks_dir, party).map_err(file_error)?;
        let deadline = Instant::now() + wait;
        let replica_path = party_dir.join(locks::replica_lock_name(run, database));
        let replica = locks::first_free(&[replica_path], deadline)
            .map_err(file_error)?
            .ok_or_else(|| HandoverError::ReplicaBusy { what: format!("{run}/{database}"), waited: wait.as_secs() })?;
        let slots: Vec<PathBuf> = (0..max_slots).map(|n| party_dir.join(format!("slot-{n}.lock"))).collect();
        let slot = locks::first_free(&slots, deadline).map_err(file_error)?.ok_or_else(|| {
            HandoverError::PartyBusy { party: party.to_owned(), max: max_slots, waited: wait.as_secs() }
        })?;
        Ok(Locks { _replica: replica, _slot: slot })
    }
}

pub struct Launch<'a> {
    pub program: &'a Path,
    pub args: Vec<OsString>,
    /// The run folder, open: the child makes it its working folder by this descriptor, so no path is resolved and
    /// nothing the child is given or prints names a folder of this host.
    pub run_folder: BorrowedFd<'a>,
    pub fsize_limit: u64,
    pub sandbox: Sandbox,
    pub memory: ChildMemory,
    pub max_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut,
    /// The child failed at its memory limit (`max_sync_memory`).
    MemoryLimit,
}

impl Exit {
    pub fn succeeded(self) -> bool {
        self == Exit::Code(0)
    }

    /// The gate's own exit status for this outcome, as a shell would report it.
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(code) => code,
            Exit::Signal(signal) => 128 + signal,
            Exit::TimedOut => 124,
            Exit::MemoryLimit => 1,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "{code}"),
            Exit::Signal(signal) => write!(f, "signal-{signal}"),
            Exit::TimedOut => f.write_str("timeout"),
            Exit::MemoryLimit => f.write_str("memory_limit"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub exit: Exit,
    pub seconds: f64,
    /// The child's peak resident memory in bytes (its cgroup's peak where it had one, which counts its page cache
    /// too; else wait4's ru_maxrss).
    pub peak_rss: Option<u64>,
    /// The last signal the gate received and passed on to the child (SIGHUP, SIGTERM, SIGINT).
    pub forwarded: Option<Signal>,
}

/// Runs the child to its end. The gate is single-threaded: the signals it handles are blocked and taken with
/// sigwait, so nothing runs in a signal handler.
pub fn run(launch: Launch<'_>) -> Result<Outcome, HandoverError> {
    let signals = sys::gate_signals();
    sys::block_signals(&signals).map_err(HandoverError::Wait)?;
    let started = Instant::now();
    let mut command = Command::new(launch.program);
    // SQLite's temp files go to the working folder, named relatively like everything else the child is given.
    command.args(&launch.args).env_clear().env("PATH", "/usr/bin:/bin").env("LC_ALL", "C").env("SQLITE_TMPDIR", ".");
    let (fsize_limit, sandbox, run_folder) = (launch.fsize_limit, launch.sandbox, launch.run_folder.as_raw_fd());
    let memory = launch.memory;
    let child_memory =
        memory.for_child().map_err(|source| HandoverError::Spawn { program: launch.program.to_owned(), source })?;
    sys::run_before_exec(&mut command, move || {
        sys::prepare_child(fsize_limit)?;
        // Before Landlock, which would deny the write to the cgroup's cgroup.procs.
        child_memory.enforce()?;
        sys::enter_dir(run_folder)?;
        sandbox.enforce_in_child()
    });
    let spawned = command.spawn();
    drop(command);
    let child = spawned.map_err(|source| HandoverError::Spawn { program: launch.program.to_owned(), source })?;
    let pid = child.id();
    sys::set_alarm(launch.max_seconds.clamp(1, u32::MAX as u64) as u32);
    let mut timed_out = false;
    let mut forwarded = None;
    let (exit, peak_rss) = loop {
        let signal = signals.wait().map_err(HandoverError::Wait)?;
        match signal {
            Signal::SIGCHLD => {
                let end = sys::child_end(pid).map_err(HandoverError::Wait)?;
                let exit = match end.state {
                    ChildState::Exited(_) | ChildState::Killed(_) if timed_out => Exit::TimedOut,
                    ChildState::Exited(code) => Exit::Code(code),
                    ChildState::Killed(signal) => Exit::Signal(signal),
                    ChildState::Running => continue,
                };
                break (exit, end.peak_rss);
            }
            Signal::SIGALRM if !timed_out => {
                timed_out = true;
                sys::signal_child(pid, Signal::SIGTERM);
                sys::set_alarm(KILL_GRACE_SECONDS);
            }
            Signal::SIGALRM => sys::signal_child(pid, Signal::SIGKILL),
            signal => {
                forwarded = Some(signal);
                sys::signal_child(pid, signal)
            }
        }
    };
    sys::set_alarm(0);
    let exit = if exit != Exit::TimedOut && memory.exceeded(peak_rss) { Exit::MemoryLimit } else { exit };
    let peak_rss = memory.cgroup_peak().or(peak_rss);
    drop(memory);
    Ok(Outcome { exit, seconds: started.elapsed().as_secs_f64(), peak_rss, forwarded })
}
