//! evosync: the central side of kromosynth run sync.
//!
//! The crate is organised in wings, and each shared rule has one home:
//!
//! | module | owns |
//! | --- | --- |
//! | `gate` | the push path, blocking, no async runtime: `evosync-gate` starts in about a millisecond |
//! | `serve` | `evosync serve`: the workers' sync API, the SSH tunnel, the admin API, metrics, events, TLS (axum, tokio) |
//! | `worker` | what runs on a worker, not on the central host: `evosync tunnel`, ssh's `ProxyCommand` over HTTPS |
//! | `admin` | operations shared by the command line and the admin API; `init`; authorized_keys; backups; archives |
//! | `cli` | `evosync`'s command line: clap, dispatch, text or JSON output |
//! | `store` | the SQLite state store, one file per table group, and the hash-chained audit trail |
//! | `fs` | every system call and every `unsafe` (`fs::sys`), confinement, landing a file durably |
//! | `access` | the rules both doors apply: key state, run ownership, quota headroom |
//! | `config`, `policy`, `names`, `size`, `time`, `keys`, `secrets`, `log` | what every wing reads |
//!
//! `unsafe` is denied everywhere but in `fs::sys`, where each block carries a SAFETY note.
#![deny(unsafe_code)]

pub mod access;
pub mod admin;
pub mod broker;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod fs;
pub mod gate;
pub mod keys;
pub mod log;
pub mod names;
pub mod policy;
pub(crate) mod secrets;
pub(crate) mod serve;
/// The service's streaming multipart parser, pure, for the fuzz target.
pub use serve::multipart;
pub mod size;
pub mod store;
pub mod time;
pub mod worker;
