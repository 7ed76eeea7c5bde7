//! API keys and admin tokens: generated with a public id and a 256-bit secret, shown once, stored as an argon2id hash.
//! The service verifies them (`serve::verifier`), paying argon2 once per key, in memory it reuses.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

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

/// The most argon2 memory a stored hash may ask for (64 MiB; ours use 19 MiB): a hash asking more is refused, not
/// computed.
const MAX_HASH_BLOCKS: u32 = 64 * 1024;

/// True when `secret` matches the argon2 hash `phc`. The hash is computed in `memory`, which is grown to what it needs
/// and kept for the next call: argon2 otherwise
/// allocates its 19 MiB afresh on each call, and the allocator keeps what it freed in the arena of whichever thread
/// ran it: a service that hashes on many threads then holds 19 MiB per thread long after.
pub fn verify_secret(secret: &str, phc: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm) else { return false };
    let Ok(version) = hash.version.map_or(Ok(Version::default()), Version::try_from) else { return false };
    let Ok(params) = Params::try_from(&hash) else { return false };
    if params.m_cost() > MAX_HASH_BLOCKS {
        return false;
    }
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else { return false };
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
    let mut computed = vec![0u8; expected.len()];
    let argon2 = Argon2::new(algorithm, version, params);
    if argon2.hash_password_into_with_memory(secret.as_bytes(), salt, &mut computed, &mut memory[..]).is_err() {
        return false;
    }
    // `Output`'s equality is constant-time.
    password_hash::Output::new(&computed).is_ok_and(|computed| computed == expected)
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
        let mut memory = Vec::new();
        assert!(verify_secret(plain, &secret.hash, &mut memory));
        assert_eq!(memory.len(), 19 * 1024, "argon2id's default 19 MiB, kept for the next call");
        assert!(!verify_secret(&"0".repeat(64), &secret.hash, &mut memory));
        assert!(!verify_secret(plain, "$argon2id$v=19$m=1048576,t=2,p=1$c2FsdHNhbHQ$aGFzaA", &mut memory));
        assert!(parse(ADMIN_TOKEN_PREFIX, &secret.token).is_none());
        assert!(parse(API_KEY_PREFIX, "evs_abc_def").is_none());
    }
}
