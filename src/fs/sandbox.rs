//! The kernel-enforced sandbox around sqlite3_rsync: Landlock confines the child to its run folder (plus what it must
//! read to start), with no TCP and no signals or abstract sockets outside its domain; a seccomp filter denies it every
//! socket, which Landlock cannot (path UNIX sockets such as /dev/log, UDP). The child talks only over the stdin and
//! stdout it inherits, so it needs none.
//!
//! The ruleset and the filter are built in the gate and applied in the forked child just before exec, so the gate
//! itself keeps the access it needs to lock, audit and record the outcome.

use crate::fs::sys;
use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Mutex;

/// The newest ABI whose features the gate asks for; older kernels get what they support (best effort).
const TARGET_ABI: ABI = ABI::V6;

/// What a child needs to read to start: its binary, the loader and shared libraries.
const SYSTEM_READ_PATHS: [&str; 6] =
    ["/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/ld.so.preload", "/dev/urandom"];

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the policy requires a sandbox (require_sandbox: true) but this kernel offers no Landlock")]
    Unavailable,
    #[error("the sandbox could not be built: {0}")]
    Build(String),
    #[error("the policy requires a sandbox (require_sandbox: true) but this kernel takes no seccomp filter")]
    NoSeccomp,
}

/// What the child may not call: every way to a socket (creating one, and connect/bind/listen/accept for good
/// measure), io_uring (whose operations reach sockets without these calls), ptrace and the cross-process memory calls.
/// Each fails with EPERM.
const DENIED_SYSCALLS: [i64; 13] = [
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
];

/// The filter for `DENIED_SYSCALLS`. On x86_64 each call is denied under its x32 number too (the same audit
/// architecture, numbers with bit 30 set), so that door is shut as well; other architectures' calls (i386) are killed
/// by the filter's architecture check.
pub fn socket_filter() -> Result<BpfProgram, String> {
    let arch =
        std::env::consts::ARCH.try_into().map_err(|e| format!("seccomp on {}: {e:?}", std::env::consts::ARCH))?;
    let x32 = if cfg!(target_arch = "x86_64") { vec![0, 0x4000_0000] } else { vec![0] };
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        DENIED_SYSCALLS.iter().flat_map(|&call| x32.iter().map(move |bit| (call | bit, Vec::new()))).collect();
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch)
        .map_err(|e| e.to_string())?;
    filter.try_into().map_err(|e: seccompiler::BackendError| e.to_string())
}

/// What the confined process may do in its run folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderAccess {
    /// A sync: read, write, create and remove files there.
    ReadWrite,
    /// An inspection: read only.
    ReadOnly,
}

/// A ruleset ready to apply in the child, and the line the audit records about it.
pub struct Sandbox {
    ruleset: Mutex<Option<RulesetCreated>>,
    seccomp: Option<BpfProgram>,
    required: bool,
    pub summary: String,
}

impl Sandbox {
    /// Builds the ruleset: read-only access to the system paths and `program`, and file access inside `run_folder`
    /// (reading and writing for a sync; reading only for an inspection).
    pub fn prepare(program: &Path, run_folder: &OwnedFd, required: bool) -> Result<Sandbox, SandboxError> {
        Sandbox::prepare_with(program, run_folder, required, FolderAccess::ReadWrite)
    }

    pub fn prepare_with(
        program: &Path,
        run_folder: &OwnedFd,
        required: bool,
        access: FolderAccess,
    ) -> Result<Sandbox, SandboxError> {
        Sandbox::prepare_for(program, &[(run_folder, access)], required)
    }

    /// As `prepare_with`, for a process that works in several folders (the catalog's copies).
    pub fn prepare_for(
        program: &Path,
        folders: &[(&OwnedFd, FolderAccess)],
        required: bool,
    ) -> Result<Sandbox, SandboxError> {
        let seccomp = if sys::seccomp_filter_available() {
            Some(socket_filter().map_err(SandboxError::Build)?)
        } else if required {
            return Err(SandboxError::NoSeccomp);
        } else {
            None
        };
        let seccomp_summary = if seccomp.is_some() { "seccomp (no sockets, io_uring, ptrace)" } else { "no seccomp" };
        let kernel_abi = sys::landlock_abi_version();
        if kernel_abi == 0 {
            if required {
                return Err(SandboxError::Unavailable);
            }
            let summary = format!("no landlock; {seccomp_summary}");
            return Ok(Sandbox { ruleset: Mutex::new(None), seccomp, required, summary });
        }
        let build = || -> Result<RulesetCreated, landlock::RulesetError> {
            let read = AccessFs::from_read(TARGET_ABI);
            let allowed = |access: FolderAccess| match access {
                FolderAccess::ReadWrite => {
                    AccessFs::ReadFile
                        | AccessFs::WriteFile
                        | AccessFs::ReadDir
                        | AccessFs::RemoveFile
                        | AccessFs::MakeReg
                        | AccessFs::Truncate
                }
                FolderAccess::ReadOnly => AccessFs::ReadFile | AccessFs::ReadDir,
            };
            let mut ruleset = Ruleset::default()
                .set_compatibility(CompatLevel::BestEffort)
                .handle_access(AccessFs::from_all(TARGET_ABI))?
                .handle_access(AccessNet::from_all(TARGET_ABI))?
                .scope(Scope::from_all(TARGET_ABI))?
                .create()?;
            for path in SYSTEM_READ_PATHS.iter().map(Path::new).chain([program]) {
                // A path this system lacks needs no rule.
                if let Ok(fd) = PathFd::new(path) {
                    ruleset = ruleset.add_rule(PathBeneath::new(fd, read))?;
                }
            }
            for (folder, access) in folders {
                ruleset = ruleset.add_rule(PathBeneath::new(*folder, allowed(*access)))?;
            }
            Ok(ruleset)
        };
        let ruleset = build().map_err(|e| SandboxError::Build(e.to_string()))?;
        let abi = kernel_abi.min(TARGET_ABI as i64);
        let net = if abi >= 4 { ", no tcp" } else { "" };
        let scope = if abi >= 6 { ", scoped signals+sockets" } else { "" };
        Ok(Sandbox {
            ruleset: Mutex::new(Some(ruleset)),
            seccomp,
            required,
            summary: format!("landlock abi {abi} (run folder only{net}{scope}); {seccomp_summary}"),
        })
    }

    /// Applies the ruleset, then the seccomp filter, to the calling process. Called in the forked child, right
    /// before exec.
    pub fn enforce_in_child(&self) -> std::io::Result<()> {
        self.restrict_files()?;
        match &self.seccomp {
            Some(program) => sys::apply_seccomp(program),
            None => Ok(()),
        }
    }

    fn restrict_files(&self) -> std::io::Result<()> {
        let Some(ruleset) = self.ruleset.lock().ok().and_then(|mut slot| slot.take()) else {
            return if self.required { Err(std::io::Error::other("sandbox required but missing")) } else { Ok(()) };
        };
        match ruleset.restrict_self() {
            Ok(status) if status.ruleset == RulesetStatus::NotEnforced && self.required => {
                Err(std::io::Error::other("sandbox required but not enforced"))
            }
            Ok(_) => Ok(()),
            Err(_) if !self.required => Ok(()),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }
}
