//! The catalog wing: what the central's readers may see of the runs the parties pushed. A replica is checked after
//! every push (`verify`, against the policy's `schemas`) and published in `catalog_root` only when it passes.

pub mod inspect;
pub mod publish;
pub mod reconcile;
pub mod schema;
pub mod verify;
