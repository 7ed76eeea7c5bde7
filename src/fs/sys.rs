//! Every system call evosync makes beyond std, wrapped in one place, and every `unsafe` block of the crate, each with
//! its SAFETY note. The rest of the crate is `#![forbid(unsafe_code)]` below its module roots.

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Opens the directory `name` beneath `dir` without following any symlink and without leaving `dir`
/// (openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS).
pub fn open_dir_beneath(dir: &impl AsRawFd, name: &str) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(dir.as_raw_fd(), name, how)?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens an administrator-given directory (symlinks in it are the administrator's choice).
pub fn open_dir(path: &Path) -> Result<OwnedFd, Errno> {
    let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The Landlock ABI version the running kernel offers; 0 when Landlock is missing or disabled.
pub fn landlock_abi_version() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer and size 0 this call only reports the ABI version.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    version.max(0)
}

/// Creates the directory `name` in `dir` (mode 0750). `Ok(false)` when it already exists.
pub fn make_dir_in(dir: &impl AsRawFd, name: &str) -> Result<bool, Errno> {
    match nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o750)) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `lstat` of `name` in `dir`; `None` when it does not exist.
pub fn stat_in(dir: &impl AsRawFd, name: &str) -> Result<Option<FileStat>, Errno> {
    match fstatat(Some(dir.as_raw_fd()), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn fstat(fd: &impl AsRawFd) -> Result<FileStat, Errno> {
    nix::sys::stat::fstat(fd.as_raw_fd())
}

pub fn is_dir(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

pub fn is_regular_file(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

/// The entries of the directory `dir` (without `.` and `..`), each with its lstat.
pub fn list_dir(dir: &impl AsRawFd) -> Result<Vec<(String, FileStat)>, Errno> {
    let mut listing = nix::dir::Dir::openat(
        Some(dir.as_raw_fd()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut entries = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        if name == "." || name == ".." {
            continue;
        }
        if let Some(stat) = stat_in(dir, name)? {
            entries.push((name.to_owned(), stat));
        }
    }
    Ok(entries)
}

/// Takes an exclusive flock on `file` without waiting; `Ok(None)` when another process holds it.
pub fn try_lock_exclusive(file: File) -> std::io::Result<Option<nix::fcntl::Flock<File>>> {
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

/// Waits for an exclusive flock on `file`.
pub fn lock_exclusive(file: File) -> std::io::Result<nix::fcntl::Flock<File>> {
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e.into())
}

/// The signals the gate handles itself while its child runs.
pub fn gate_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::Signal::*;
    let mut set = nix::sys::signal::SigSet::empty();
    for signal in [SIGCHLD, SIGHUP, SIGTERM, SIGINT, SIGALRM] {
        set.add(signal);
    }
    set
}

pub use nix::sys::signal::Signal;

/// What became of a child, seen without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildState {
    Running,
    Exited(i32),
    /// Ended by this signal.
    Killed(i32),
}

/// Reaps the child `pid` if it has ended (waitpid with WNOHANG).
pub fn child_state(pid: u32) -> Result<ChildState, Errno> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    Ok(match waitpid(nix::unistd::Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG))? {
        WaitStatus::Exited(_, code) => ChildState::Exited(code),
        WaitStatus::Signaled(_, signal, _) => ChildState::Killed(signal as i32),
        _ => ChildState::Running,
    })
}

/// Sends `signal` to the child `pid`; a child already gone needs none.
pub fn signal_child(pid: u32, signal: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// SIGALRM in `seconds` (0 cancels the alarm).
pub fn set_alarm(seconds: u32) {
    if seconds == 0 {
        nix::unistd::alarm::cancel();
    } else {
        nix::unistd::alarm::set(seconds);
    }
}

/// Blocks `set` in the calling (single-threaded) gate, so the signals queue up for `sigwait`.
pub fn block_signals(set: &nix::sys::signal::SigSet) -> Result<(), Errno> {
    set.thread_block()
}

/// Runs in the forked child before exec: only async-signal-safe calls (raw syscalls, no allocation).
pub fn prepare_child(fsize_limit: u64) -> std::io::Result<()> {
    use nix::sys::resource::{setrlimit, Resource};
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    // A write past RLIMIT_FSIZE then fails with EFBIG instead of killing the child: SQLite sees a full disk and rolls
    // the transaction back, leaving the replica as it was.
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: installing SIG_IGN runs no handler code.
    unsafe { sigaction(Signal::SIGXFSZ, &ignore) }?;
    setrlimit(Resource::RLIMIT_FSIZE, fsize_limit, fsize_limit)?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    Ok(())
}

/// Creates `name` in `dir` for writing, failing if it exists (O_CREAT | O_EXCL | O_NOFOLLOW), with `mode`.
pub fn create_file_in(dir: &impl AsRawFd, name: &str, mode: u32) -> Result<File, Errno> {
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens the regular file `name` in `dir` for reading, without following a symlink.
pub fn open_file_in(dir: &impl AsRawFd, name: &str) -> Result<File, Errno> {
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// (uid, gid) this process acts as.
pub fn effective_ids() -> (u32, u32) {
    (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw())
}

/// True when this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Gives an open file to (uid, gid).
pub fn give_to(file: &File, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    std::os::unix::fs::fchown(file, Some(uid), Some(gid))
}

/// Gives `path` to `account` (its uid and primary group) when running as root and the account exists.
pub fn chown_to_account(path: &Path, account: &str) {
    if !is_root() {
        return;
    }
    if let Ok(Some(user)) = nix::unistd::User::from_name(account) {
        let _ = nix::unistd::chown(path, Some(user.uid), Some(user.gid));
    }
}

/// Gives `path` to the group `group` when running as root and the group exists.
pub fn chgrp(path: &Path, group: &str) -> std::io::Result<()> {
    if !is_root() {
        return Ok(());
    }
    if let Ok(Some(group)) = nix::unistd::Group::from_name(group) {
        nix::unistd::chown(path, None, Some(group.gid))?;
    }
    Ok(())
}

/// The name of the account this process runs as (one NSS lookup).
pub fn account_name() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|user| user.name)
}

/// The numeric uid, for when the account has no name.
pub fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// Arranges for `prepare` to run in the forked child between fork and exec.
pub fn run_before_exec(
    command: &mut std::process::Command,
    prepare: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the gate is single-threaded when it spawns, so the forked child may allocate; the closures passed here
    // (prepare_child, Sandbox::enforce_in_child) make raw system calls only and touch no lock another thread held.
    unsafe {
        command.pre_exec(prepare);
    }
}

/// Renames `from` to `to`, both in `dir`: no path outside the folder is resolved.
pub fn rename_in(dir: &impl AsRawFd, from: &str, to: &str) -> Result<(), Errno> {
    nix::fcntl::renameat(Some(dir.as_raw_fd()), from, Some(dir.as_raw_fd()), to)
}

/// Renames `from` to `to` in `dir` only if `to` does not exist yet: `Ok(false)` when it does.
pub fn rename_new_in(dir: &impl AsRawFd, from: &str, to: &str) -> Result<bool, Errno> {
    let fd = Some(dir.as_raw_fd());
    match nix::fcntl::renameat2(fd, from, fd, to, nix::fcntl::RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

pub fn unlink_in(dir: &impl AsRawFd, name: &str) -> Result<(), Errno> {
    nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, nix::unistd::UnlinkatFlags::NoRemoveDir)
}

/// Makes the folder's entries durable (after a rename in it).
pub fn sync_dir(dir: &impl AsRawFd) -> Result<(), Errno> {
    nix::unistd::fsync(dir.as_raw_fd())
}

// ---------------------------------------------------------------------------------------------------------------
// The sync child's confinement beyond Landlock: its working folder entered by descriptor, its memory (RLIMIT_AS or a
// cgroup v2 folder), its seccomp filter, how it ended (with its peak RSS), and what the host offers of each.
// ---------------------------------------------------------------------------------------------------------------

/// Makes the folder open as `dir` the working folder, by its descriptor: no path is resolved, so the folder the gate
/// proved is the one the child works in. Async-signal-safe (one fchdir).
pub fn enter_dir(dir: std::os::fd::RawFd) -> std::io::Result<()> {
    nix::unistd::fchdir(dir).map_err(std::io::Error::from)
}

/// Caps the calling process's address space at `bytes` (RLIMIT_AS): an allocation past it fails (SQLite reports
/// out of memory) instead of growing. Async-signal-safe (one setrlimit).
pub fn limit_address_space(bytes: u64) -> std::io::Result<()> {
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, bytes, bytes).map_err(std::io::Error::from)
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open as `procs` ("0" names the writer itself).
/// Async-signal-safe (one write).
pub fn enter_cgroup(procs: &File) -> std::io::Result<()> {
    use std::io::Write;
    let mut procs = procs;
    procs.write_all(b"0")
}

/// Whether the kernel takes seccomp filters that return an errno (seccomp(SECCOMP_GET_ACTION_AVAIL)).
pub fn seccomp_filter_available() -> bool {
    const SECCOMP_GET_ACTION_AVAIL: libc::c_uint = 2;
    let action: u32 = libc::SECCOMP_RET_ERRNO;
    // SAFETY: the kernel only reads the u32 the pointer names, which lives across the call.
    let answer = unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, &action as *const u32) };
    answer == 0
}

/// Installs `program` as the calling thread's seccomp filter (with no_new_privs, which the filter requires).
/// Async-signal-safe: a prctl and a seccomp call on a program built before the fork.
pub fn apply_seccomp(program: &[seccompiler::sock_filter]) -> std::io::Result<()> {
    seccompiler::apply_filter(program).map_err(|e| std::io::Error::other(e.to_string()))
}

/// The file system type of `path` is cgroup2.
pub fn is_cgroup2(path: &Path) -> bool {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
    statfs(path).map(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC).unwrap_or(false)
}

/// How a child ended, and the most memory it ever held resident (from wait4's rusage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildEnd {
    pub state: ChildState,
    /// Peak resident set size in bytes (ru_maxrss), when the child was reaped.
    pub peak_rss: Option<u64>,
}

/// Reaps the child `pid` if it has ended (wait4 with WNOHANG), with its resource usage.
pub fn child_end(pid: u32) -> Result<ChildEnd, Errno> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data the kernel fills in; an all-zero value is a valid one to start from.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers name live locals of the right types for the duration of the call.
    let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, libc::WNOHANG, &mut usage) };
    if reaped < 0 {
        return Err(Errno::last());
    }
    if reaped == 0 {
        return Ok(ChildEnd { state: ChildState::Running, peak_rss: None });
    }
    let state = if libc::WIFEXITED(status) {
        ChildState::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        ChildState::Killed(libc::WTERMSIG(status))
    } else {
        ChildState::Running
    };
    // ru_maxrss is in KiB on Linux.
    Ok(ChildEnd { state, peak_rss: Some((usage.ru_maxrss.max(0) as u64) * 1024) })
}

/// (device, inode, mtime seconds, mtime nanoseconds, size) of `path`: what identifies one build of a binary.
pub fn file_identity(path: &Path) -> std::io::Result<(u64, u64, i64, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec(), meta.size()))
}
