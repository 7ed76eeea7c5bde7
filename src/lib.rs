//! evosync: the central side of kromosynth run sync.
//!
//! The gate's path (`command`, `policy`, `decide`, `confine`, `sandbox`, `handover`, `audit`, `reply`) is plain
//! blocking code with no async runtime, so `evosync-gate` starts in about a millisecond.

pub mod admin;
pub mod audit;
pub mod authorized_keys;
pub mod command;
pub mod config;
pub mod confine;
pub mod decide;
pub mod gate;
pub mod handover;
pub mod http;
pub mod ingest;
pub mod keys;
pub mod names;
pub mod policy;
pub mod reply;
pub mod sandbox;
pub mod secrets;
pub mod size;
pub mod store;
pub mod sync_api;
pub mod sys;
