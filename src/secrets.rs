//! API keys and admin tokens: generated with a public id and a 256-bit secret, shown once, stored as an argon2id hash.
//! The service verifies them (`serve::auth`), paying argon2 once per key.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// `evs_<16 hex id>_<64 hex secret>`: the id is public and names the key; the secret is 256 random bits.
pub const API_KEY_PREFIX: &str = "evs_";
/// Admin tokens look the same with another prefix, so one cannot be mistaken for the other.
pub const ADMIN_TOKEN_PREFIX: &str = "evsadm_";

pub struct Secret {
    pub id: String,
    /// The whole token as handed out: prefix, id, secret.
    pub token: String,
    pub hash: String,
}

/// A new token with `prefix`, and the argon2id hash of its secret.
pub fn generate(prefix: &str) -> Secret {
    let id = crate::time::new_id();
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let secret = crate::time::hex(&bytes);
    let hash = hash_secret(&secret);
    Secret { token: format!("{prefix}{id}_{secret}"), id, hash }
}

pub fn hash_secret(secret: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(secret.as_bytes(), &salt).map(|h| h.to_string()).unwrap_or_default()
}

pub fn verify_secret(secret: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| Argon2::default().verify_password(secret.as_bytes(), &hash).is_ok())
}

/// Splits a presented token into (id, secret); `None` when it is not of the form.
pub fn parse<'a>(prefix: &str, token: &'a str) -> Option<(&'a str, &'a str)> {
    let (id, secret) = token.strip_prefix(prefix)?.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 64)).then_some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_and_verifies_and_nothing_else_does() {
        let secret = generate(API_KEY_PREFIX);
        let (id, plain) = parse(API_KEY_PREFIX, &secret.token).unwrap();
        assert_eq!(id, secret.id);
        assert!(secret.hash.starts_with("$argon2id$"));
        assert!(verify_secret(plain, &secret.hash));
        assert!(!verify_secret(&"0".repeat(64), &secret.hash));
        assert!(parse(ADMIN_TOKEN_PREFIX, &secret.token).is_none());
        assert!(parse(API_KEY_PREFIX, "evs_abc_def").is_none());
    }
}
