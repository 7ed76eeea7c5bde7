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

/// Creates the directory `name` in `dir`: mode 0750, or 0770 inside a setgid folder (a per-party tree, whose group
/// the service shares; the new folder inherits the setgid bit). `Ok(false)` when it already exists.
pub fn make_dir_in(dir: &impl AsRawFd, name: &str) -> Result<bool, Errno> {
    let shared = fstat(dir).is_ok_and(|stat| stat.st_mode & libc::S_ISGID != 0);
    let mode = if shared { 0o770 } else { 0o750 };
    match nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(mode)) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates the directory `name` in `dir` with `mode` (less the umask); `Ok(false)` when it already exists.
pub fn make_dir_mode_in(dir: &impl AsRawFd, name: &str, mode: u32) -> Result<bool, Errno> {
    match nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(mode)) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates the directory `name` in `dir` for this process's account alone (0700), when it does not exist yet.
pub fn make_private_dir_in(dir: &impl AsRawFd, name: &str) -> Result<(), Errno> {
    match nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
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

/// Takes a shared flock on `file` without waiting; `Ok(None)` when another process holds it exclusively.
pub fn try_lock_shared(file: File) -> std::io::Result<Option<nix::fcntl::Flock<File>>> {
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
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

/// What the SSH channel (standard input) holds before a push starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Bytes from the worker are waiting.
    Data,
    /// The worker closed it without sending a byte.
    Closed,
    /// Nothing arrived within the wait.
    Quiet,
}

/// Waits up to `seconds` for standard input to hold a byte or its end, and says which, without taking a byte.
pub fn wait_for_channel(seconds: u64) -> Channel {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::BorrowedFd;
    // SAFETY: descriptor 0 is this process's standard input for as long as it runs; nothing closes it meanwhile.
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    let timeout =
        PollTimeout::try_from(seconds.saturating_mul(1000).min(i32::MAX as u64) as i32).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(stdin, PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(0) => Channel::Quiet,
        Ok(_) => {
            let revents = fds[0].revents().unwrap_or(PollFlags::empty());
            if !revents.contains(PollFlags::POLLIN) {
                return Channel::Closed;
            }
            // A socket at its end is readable too: peek (a pipe's end never sets POLLIN without data).
            let mut byte = [0u8; 1];
            match nix::sys::socket::recv(0, &mut byte, nix::sys::socket::MsgFlags::MSG_PEEK) {
                Ok(0) => Channel::Closed,
                _ => Channel::Data,
            }
        }
        Err(_) => Channel::Data,
    }
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

/// Opens the file `name` in `dir` to read and write, without following a symlink.
pub fn open_file_rw_in(dir: &impl AsRawFd, name: &str) -> Result<File, Errno> {
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
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

/// (uid, primary gid) of `account`, when it exists.
pub fn account_ids(account: &str) -> Option<(u32, u32)> {
    nix::unistd::User::from_name(account).ok().flatten().map(|user| (user.uid.as_raw(), user.gid.as_raw()))
}

/// Gives `path` to (uid, gid) with `mode` (the setgid bit included); a process that is not root only sets the mode.
pub fn give_path(path: &Path, (uid, gid): (u32, u32), mode: u32) -> std::io::Result<()> {
    if is_root() {
        nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)))?;
    }
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
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

/// The name of the account with `uid` (one NSS lookup).
pub fn account_of(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|user| user.name)
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

/// Makes the child `command` starts get SIGKILL when the thread that starts it ends (the service's copy for readers:
/// a copy left running after the service stopped would read a replica the next push may be writing, since the copy
/// lock died with the service).
pub fn die_with_parent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure makes one raw system call (prctl), which is async-signal-safe, allocates nothing and takes
    // no lock, so it may run in the child of a multi-threaded process between fork and exec.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        });
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

/// Renames `from` in `from_dir` to `to` in `to_dir` (one file system) only if `to` does not exist yet: `Ok(false)`
/// when it does. No path outside the two folders is resolved.
pub fn rename_between(from_dir: &impl AsRawFd, from: &str, to_dir: &impl AsRawFd, to: &str) -> Result<bool, Errno> {
    let (source, target) = (Some(from_dir.as_raw_fd()), Some(to_dir.as_raw_fd()));
    match nix::fcntl::renameat2(source, from, target, to, nix::fcntl::RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Renames `from` in `from_dir` to `to` in `to_dir` (one file system), replacing what is there.
pub fn rename_over_between(from_dir: &impl AsRawFd, from: &str, to_dir: &impl AsRawFd, to: &str) -> Result<(), Errno> {
    nix::fcntl::renameat(Some(from_dir.as_raw_fd()), from, Some(to_dir.as_raw_fd()), to)
}

pub fn unlink_in(dir: &impl AsRawFd, name: &str) -> Result<(), Errno> {
    nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, nix::unistd::UnlinkatFlags::NoRemoveDir)
}

/// Copies the first `len` bytes of `from` into `to` (from their starts) inside the kernel (copy_file_range), with
/// no buffer of ours in between.
pub fn copy_whole(from: &File, to: &File, len: u64) -> std::io::Result<()> {
    let (mut from_offset, mut to_offset) = (0i64, 0i64);
    while (from_offset as u64) < len {
        let chunk = (len - from_offset as u64).min(1 << 30) as usize;
        let copied = nix::fcntl::copy_file_range(from, Some(&mut from_offset), to, Some(&mut to_offset), chunk)?;
        if copied == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file ended before its size"));
        }
    }
    Ok(())
}

/// Makes the folder's entries durable (after a rename in it).
pub fn sync_dir(dir: &impl AsRawFd) -> Result<(), Errno> {
    nix::unistd::fsync(dir.as_raw_fd())
}

// ---- the catalog: symlinks, swaps, removals beneath a folder, POSIX ACLs ----

/// Creates the symlink `name` in `dir`, pointing at `target`.
pub fn symlink_in(target: &Path, dir: &impl AsRawFd, name: &str) -> Result<(), Errno> {
    nix::unistd::symlinkat(target, Some(dir.as_raw_fd()), name)
}

/// Where the symlink `name` in `dir` points; `None` when it is no symlink (or missing).
pub fn read_link_in(dir: &impl AsRawFd, name: &str) -> Option<std::path::PathBuf> {
    nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name).ok().map(std::path::PathBuf::from)
}

/// Swaps `a` and `b` in `dir` atomically (RENAME_EXCHANGE): whoever looks sees one or the other, never neither.
pub fn exchange_in(dir: &impl AsRawFd, a: &str, b: &str) -> Result<(), Errno> {
    let fd = Some(dir.as_raw_fd());
    nix::fcntl::renameat2(fd, a, fd, b, nix::fcntl::RenameFlags::RENAME_EXCHANGE)
}

/// Removes `name` in `dir` and everything beneath it, without following a symlink out of it.
pub fn remove_tree_in(dir: &impl AsRawFd, name: &str) -> Result<(), Errno> {
    match stat_in(dir, name)? {
        None => Ok(()),
        Some(stat) if is_dir(&stat) => {
            let inner = open_dir_beneath(dir, name)?;
            for (entry, _) in list_dir(&inner)? {
                remove_tree_in(&inner, &entry)?;
            }
            nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, nix::unistd::UnlinkatFlags::RemoveDir)
        }
        Some(_) => unlink_in(dir, name),
    }
}

/// One entry of a POSIX ACL: a tag (`ACL_*`), the permission bits (r=4, w=2, x=1), and the uid or gid of a named
/// entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclEntry {
    pub tag: u16,
    pub perm: u16,
    pub id: Option<u32>,
}

pub const ACL_USER_OBJ: u16 = 0x01;
pub const ACL_GROUP_OBJ: u16 = 0x04;
pub const ACL_GROUP: u16 = 0x08;
pub const ACL_MASK: u16 = 0x10;
pub const ACL_OTHER: u16 = 0x20;

/// The kernel's xattr form of an ACL (`linux/posix_acl_xattr.h`): version 2, then (tag, perm, id) little-endian,
/// sorted by tag and id.
pub fn acl_xattr(entries: &[AclEntry]) -> Vec<u8> {
    let mut sorted = entries.to_vec();
    sorted.sort_by_key(|e| (e.tag, e.id.unwrap_or(u32::MAX)));
    let mut bytes = 2u32.to_le_bytes().to_vec();
    for entry in sorted {
        bytes.extend_from_slice(&entry.tag.to_le_bytes());
        bytes.extend_from_slice(&entry.perm.to_le_bytes());
        bytes.extend_from_slice(&entry.id.unwrap_or(u32::MAX).to_le_bytes());
    }
    bytes
}

/// Sets the access ACL of `path` and, for a folder, its default ACL (what everything made in it inherits). Does not
/// follow a symlink.
pub fn set_acl(path: &Path, access: &[AclEntry], default: Option<&[AclEntry]>) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut pairs = vec![(c"system.posix_acl_access", acl_xattr(access))];
    if let Some(default) = default {
        pairs.push((c"system.posix_acl_default", acl_xattr(default)));
    }
    for (name, value) in pairs {
        // SAFETY: both strings are NUL-terminated and outlive the call; `value` is a valid buffer of its length.
        let done = unsafe { libc::lsetxattr(c_path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if done != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The gid of `group`, when it exists.
pub fn group_id(group: &str) -> Option<u32> {
    nix::unistd::Group::from_name(group).ok().flatten().map(|g| g.gid.as_raw())
}

// ---- who may write where: asked of the kernel, changing nothing ----

/// What a write needs of a path: to make and remove entries in a folder (write and search), or to write a file; or,
/// on the way there, to enter a folder (search).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteAccess {
    EntriesIn,
    File,
    Enter,
}

impl WriteAccess {
    fn flags(self) -> nix::unistd::AccessFlags {
        use nix::unistd::AccessFlags;
        match self {
            WriteAccess::EntriesIn => AccessFlags::W_OK | AccessFlags::X_OK,
            WriteAccess::File => AccessFlags::W_OK,
            WriteAccess::Enter => AccessFlags::X_OK,
        }
    }
}

/// The kernel's answer to an access question: yes, no (`EACCES`, `EPERM`, `EROFS`: a read-only mount such as the
/// unit's `ProtectSystem=strict` makes), or it could not say (the path is missing, say).
fn access_answer(answer: Result<(), Errno>) -> std::io::Result<bool> {
    match answer {
        Ok(()) => Ok(true),
        Err(Errno::EACCES | Errno::EPERM | Errno::EROFS) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether this process may write `path` as `access` says (faccessat with AT_EACCESS: its effective ids, the mode
/// bits, ACLs and read-only mounts all weigh). Changes nothing.
pub fn may_write(path: &Path, access: WriteAccess) -> std::io::Result<bool> {
    use nix::fcntl::AtFlags;
    access_answer(nix::unistd::faccessat(None, path, access.flags(), AtFlags::AT_EACCESS))
}

/// Whether `account` (its uid, primary group and supplementary groups) may write `path` as `access` says, changing
/// nothing. As this process's own account, asked directly; for another account (only root may ask), asked from a
/// forked child that takes on the account's ids, asks faccessat and exits with the answer.
pub fn account_may_write(path: &Path, account: &str, access: WriteAccess) -> std::io::Result<bool> {
    use nix::fcntl::AtFlags;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult, Gid, User};
    use std::os::unix::ffi::OsStrExt;
    let user = User::from_name(account)?
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("there is no account {account}")))?;
    if nix::unistd::geteuid() == user.uid {
        return may_write(path, access);
    }
    if !is_root() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("only root (or {account} itself) can ask what {account} may write"),
        ));
    }
    // Everything the child needs is made here: between fork and _exit it allocates nothing and takes no lock.
    let name = std::ffi::CString::new(account)?;
    let groups: Vec<Gid> = nix::unistd::getgrouplist(&name, user.gid)?;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let (uid, gid, flags) = (user.uid, user.gid, access.flags());
    const YES: i32 = 0;
    const NO: i32 = 1;
    const CANNOT_SAY: i32 = 2;
    // SAFETY: the child makes raw system calls only (setgroups, setresgid, setresuid, faccessat, _exit), each
    // async-signal-safe, on values made before the fork; it allocates nothing and touches no lock another thread may
    // have held, so forking a multi-threaded process is sound. The parent waits for it.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let asked = nix::unistd::setgroups(&groups)
                .and_then(|()| nix::unistd::setresgid(gid, gid, gid))
                .and_then(|()| nix::unistd::setresuid(uid, uid, uid))
                .and_then(|()| nix::unistd::faccessat(None, c_path.as_c_str(), flags, AtFlags::AT_EACCESS));
            let code = match access_answer(asked) {
                Ok(true) => YES,
                Ok(false) => NO,
                Err(_) => CANNOT_SAY,
            };
            // SAFETY: _exit ends the child at once, running no atexit handler or destructor of the parent's state.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None)? {
            WaitStatus::Exited(_, YES) => Ok(true),
            WaitStatus::Exited(_, NO) => Ok(false),
            _ => {
                // Could not say: the path is missing or unreachable; say which, as this process sees it.
                std::fs::symlink_metadata(path)?;
                Err(std::io::Error::other(format!("cannot tell whether {account} may write {}", path.display())))
            }
        },
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_child_started_to_die_with_its_parent_ends_with_the_thread_that_started_it() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = std::thread::spawn(|| {
            let mut command = std::process::Command::new("sleep");
            command.arg("60");
            super::die_with_parent(&mut command);
            command.spawn().unwrap()
        })
        .join()
        .unwrap();
        // The thread that started it has ended: the child is killed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("the child outlived the thread that started it");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(status.signal(), Some(9), "{status:?}");
    }
}
