//! `evosync catalog inspect`: one verification of one replica, in a process of its own. The service starts it after
//! a push, as the service's account, while the gate still holds the replica's lock. Before it reads a byte of the
//! replica it confines itself: its address space capped, Landlock to reading its run folder (and the system's
//! libraries), seccomp denying every socket. A database built to hurt SQLite hurts this process only.
//!
//! It prints one JSON line, `{"ok": bool, "seconds": f64, "reason": "…"|null}`, and exits 0 whatever the verdict;
//! a non-zero exit means it could not inspect at all.

use super::verify::{inspect, Budget, Depth};
use crate::config::Config;
use crate::fs::confine::PartyTree;
use crate::fs::sandbox::{FolderAccess, Sandbox};
use crate::fs::sys;
use crate::policy::Policy;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

/// The verdict as the service reads it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub ok: bool,
    pub seconds: f64,
    pub reason: Option<String>,
}

/// Inspects `party`'s `run/database` under `config_path`'s configuration. Returns the verdict, or why there is none.
pub fn run(config_path: &Path, party: &str, run: &str, database: &str) -> Result<Verdict, String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    let policy = Policy::load(&config.policy_path(party), party).map_err(|e| e.to_string())?;
    let expected =
        policy.schemas.get(database).ok_or_else(|| format!("'{database}' is not one of party {party}'s databases"))?;
    let tree = PartyTree::open(&config.replica_root, party).map_err(|e| e.to_string())?;
    let folder =
        tree.existing_run_folder(run).map_err(|e| e.to_string())?.ok_or_else(|| format!("there is no run '{run}'"))?;
    folder.check_database(database).map_err(|e| e.to_string())?;

    // Nothing below here can reach further than the run folder, the network, or past its memory.
    let started = Instant::now();
    let heap = config.verify.memory.0;
    // SQLite's hard heap limit (below) is the cap that counts; the address-space cap backs it up where the host
    // lets a process lower its own limits (the systemd unit's system-call filter does not).
    match sys::limit_address_space(heap) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
        Err(e) => return Err(format!("cannot cap this process's memory: {e}")),
    }
    let program = std::env::current_exe().map_err(|e| e.to_string())?;
    let sandbox =
        Sandbox::prepare_with(&program, &folder.fd, false, FolderAccess::ReadOnly).map_err(|e| e.to_string())?;
    sandbox.enforce_in_child().map_err(|e| format!("cannot confine this process: {e}"))?;
    sys::enter_dir(folder.fd.as_raw_fd()).map_err(|e| e.to_string())?;
    // Below the address-space cap, so SQLite fails cleanly first.
    let budget = Budget { time: std::time::Duration::from_secs(config.verify.seconds), heap_bytes: heap / 2 };
    let verdict = inspect(Path::new(database), expected, budget, Depth::Schema);
    Ok(Verdict {
        ok: verdict.is_ok(),
        seconds: started.elapsed().as_secs_f64(),
        reason: verdict.err().map(|p| p.to_string()),
    })
}
