//! AuthorizedKeysCommand (`evosync-gate authorized-keys %u %t %k`): the authorized_keys line for the key sshd was
//! presented, printed only while that key may log in. One indexed lookup, no async runtime.

use crate::access::KeyState;
use crate::config::Config;
use crate::keys::{authorized_keys_line, KeyLine};
use crate::store::{Store, StoreError};
use std::path::Path;

/// The line for the presented key when that key is active and belongs to the account logging in; `None` otherwise.
pub fn authorized_keys_for(
    config: &Config,
    config_path: &Path,
    user: &str,
    key_type: &str,
    blob: &str,
) -> Result<Option<String>, StoreError> {
    let store = Store::open_existing(&config.store_path())?;
    let Some((key, party_enabled)) = store.ssh_key_by_blob(key_type, blob)? else { return Ok(None) };
    if !KeyState::of_ssh_key(&key, party_enabled, crate::time::now()).is_active() {
        return Ok(None);
    }
    if config.tree_owner(&key.party) != user {
        return Ok(None);
    }
    let config_path = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_owned());
    Ok(Some(authorized_keys_line(&KeyLine::of(&key), &config.gate, &config_path)))
}
