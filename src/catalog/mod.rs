//! The catalog wing: what the central's readers may see of the runs the parties pushed. A replica is checked after
//! every push (`verify`, against the policy's `schemas`) and published in `catalog_root` only when it passes.

pub mod copies;
pub mod inspect;
pub mod publish;
pub mod reconcile;
pub mod schema;
pub mod verify;

use crate::config::Config;
use crate::store::Verification;

/// Whether `run` is in the catalog now (never, without a `catalog_root`).
pub fn is_published(config: &Config, run: &str) -> bool {
    config.catalog_root.as_ref().is_some_and(|root| root.join(run).is_dir())
}

/// A replica's last verdict as the status answers and `/admin/runs` show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VerificationView {
    pub ok: bool,
    /// RFC 3339, UTC.
    pub at: String,
    pub seconds: f64,
    pub reason: Option<String>,
}

impl From<&Verification> for VerificationView {
    fn from(v: &Verification) -> Self {
        VerificationView { ok: v.ok, at: crate::time::rfc3339(v.at), seconds: v.seconds, reason: v.reason.clone() }
    }
}
