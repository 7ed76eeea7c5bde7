//! The catalog wing: what the central's readers may see of the runs the parties pushed. Every push that changed a
//! replica is checked (`verify`, against the policy's `schemas`), copied for readers in one checked transaction
//! (`apply`), and its run published in `catalog_root` only when it passes (`reconcile`, `home`); `pipeline` is the one
//! flow from a finished push to publication, its states in the store (`push`).

pub mod apply;
pub mod files;
pub mod home;
pub mod inspect;
pub mod pipeline;
pub mod push;
pub mod reconcile;
pub mod schema;
pub mod verify;

use crate::config::Config;
use crate::store::Verification;

/// Whether `run` is in the catalog now.
pub fn is_published(config: &Config, run: &str) -> bool {
    config.catalog_root().join(run).is_dir()
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
