//! SSH public keys as parties hand them in: parsing, what is refused, fingerprints, and the authorized_keys line.

use ssh_key::{Algorithm, HashAlg, PublicKey};
use std::net::IpAddr;
use std::path::Path;

/// The smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 3072;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    /// `ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`, …
    pub algorithm: String,
    /// The key's base64 blob, exactly as sshd passes it to AuthorizedKeysCommand as `%k`.
    pub blob: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub comment: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("no public key given; pass the party's .pub file")]
    Empty,
    #[error("this is a private key; never send it anywhere: pass the matching .pub file instead")]
    PrivateKey,
    #[error("give exactly one public key, not {0}")]
    Several(usize),
    #[error("not an OpenSSH public key ({0}); pass a line like 'ssh-ed25519 AAAA… comment'")]
    Malformed(String),
    #[error("DSA keys are refused (broken and removed from OpenSSH); generate an ed25519 key: ssh-keygen -t ed25519")]
    Dsa,
    #[error("RSA keys under {MIN_RSA_BITS} bits are refused (this one has {0}); use ed25519 or RSA of 3072+ bits")]
    RsaTooShort(usize),
    #[error("'{0}' is not an address or CIDR block (write e.g. 192.0.2.0/24,2001:db8::/32)")]
    BadCidr(String),
}

/// Parses one OpenSSH public key line (`TYPE BASE64 [COMMENT]`), refusing what must not be registered.
pub fn parse_public_key(text: &str) -> Result<ParsedKey, KeyError> {
    if text.contains("PRIVATE KEY") {
        return Err(KeyError::PrivateKey);
    }
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let line = match lines.as_slice() {
        [] => return Err(KeyError::Empty),
        [line] => *line,
        more => return Err(KeyError::Several(more.len())),
    };
    let key = PublicKey::from_openssh(line).map_err(|e| KeyError::Malformed(e.to_string()))?;
    match key.algorithm() {
        Algorithm::Dsa => return Err(KeyError::Dsa),
        Algorithm::Rsa { .. } => {
            let bits = key.key_data().rsa().map(|rsa| rsa_bits(rsa.n.as_positive_bytes())).unwrap_or(0);
            if bits < MIN_RSA_BITS {
                return Err(KeyError::RsaTooShort(bits));
            }
        }
        _ => {}
    }
    let blob = line.split_whitespace().nth(1).unwrap_or_default().to_owned();
    Ok(ParsedKey {
        algorithm: key.algorithm().as_str().to_owned(),
        blob,
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        comment: key.comment().to_owned(),
    })
}

fn rsa_bits(modulus: Option<&[u8]>) -> usize {
    match modulus {
        Some([first, rest @ ..]) => rest.len() * 8 + (8 - first.leading_zeros() as usize),
        _ => 0,
    }
}

/// Parses `--from` (`CIDR[,CIDR]`), each an address or an address/prefix.
pub fn parse_cidrs(list: &str) -> Result<Vec<String>, KeyError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (address, prefix) = match item.split_once('/') {
                Some((address, prefix)) => (address, Some(prefix)),
                None => (item, None),
            };
            let address: IpAddr = address.parse().map_err(|_| KeyError::BadCidr(item.to_owned()))?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            match prefix.map(str::parse::<u8>) {
                None => Ok(address.to_string()),
                Some(Ok(bits)) if bits <= max => Ok(format!("{address}/{bits}")),
                Some(_) => Err(KeyError::BadCidr(item.to_owned())),
            }
        })
        .collect()
}

/// What an authorized_keys line says about one registered key.
#[derive(Debug, Clone)]
pub struct KeyLine<'a> {
    pub key_id: &'a str,
    pub party: &'a str,
    pub algorithm: &'a str,
    pub blob: &'a str,
    pub from: &'a [String],
    /// Unix seconds.
    pub expires_at: Option<i64>,
}

impl<'a> KeyLine<'a> {
    /// The line's facts for a key registered in the store.
    pub fn of(key: &'a crate::store::SshKey) -> KeyLine<'a> {
        KeyLine {
            key_id: &key.id,
            party: &key.party,
            algorithm: &key.algorithm,
            blob: &key.blob,
            from: &key.from,
            expires_at: key.expires_at,
        }
    }
}

/// `command="GATE --config CFG --key ID",restrict[,from="…"][,expiry-time="…"] TYPE KEY evosync:PARTY:ID`.
///
/// The gate and config paths come from the administrator's configuration; they are checked to need no quoting.
pub fn authorized_keys_line(line: &KeyLine<'_>, gate: &Path, config: &Path) -> String {
    let mut text =
        format!("command=\"{} --config {} --key {}\",restrict", gate.display(), config.display(), line.key_id);
    if !line.from.is_empty() {
        text.push_str(&format!(",from=\"{}\"", line.from.join(",")));
    }
    if let Some(expires) = line.expires_at {
        text.push_str(&format!(",expiry-time=\"{}\"", expiry_time(expires)));
    }
    text.push_str(&format!(" {} {} evosync:{}:{}", line.algorithm, line.blob, line.party, line.key_id));
    text
}

/// True when a path can stand inside `command="…"` without quoting.
pub fn path_is_plain(path: &Path) -> bool {
    path.to_str().is_some_and(|s| {
        s.starts_with('/') && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+@%:,".contains(&b))
    })
}

/// sshd's `expiry-time` format: YYYYMMDDHHMMSS, read as UTC when it ends in Z.
fn expiry_time(unix: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!("[year][month][day][hour][minute][second]Z");
    at.format(&format).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGaU5LeBsL4yM6a0HsXbVnUWqmi8Ctzt0O4bV2Nd3zZK worker@lab";

    #[test]
    fn an_ed25519_key_parses_with_its_fingerprint() {
        let key = parse_public_key(&format!("\n{ED25519}\n")).unwrap();
        assert_eq!(key.algorithm, "ssh-ed25519");
        assert_eq!(key.comment, "worker@lab");
        assert!(key.fingerprint.starts_with("SHA256:"));
        assert_eq!(key.blob, ED25519.split(' ').nth(1).unwrap());
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(parse_public_key(""), Err(KeyError::Empty));
        assert_eq!(
            parse_public_key("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n"),
            Err(KeyError::PrivateKey)
        );
        assert_eq!(parse_public_key(&format!("{ED25519}\n{ED25519}")), Err(KeyError::Several(2)));
        assert!(matches!(parse_public_key("ssh-ed25519 AAAAnot-base64"), Err(KeyError::Malformed(_))));
        assert!(matches!(parse_public_key(&format!("command=\"x\" {ED25519}")), Err(KeyError::Malformed(_))));
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidrs("127.0.0.1, 10.0.0.0/8,::1/128").unwrap(), ["127.0.0.1", "10.0.0.0/8", "::1/128"]);
        for bad in ["10.0.0.0/33", "example.org", "10.0.0.0/x", "1.2.3"] {
            assert!(parse_cidrs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_authorized_keys_line() {
        let line = KeyLine {
            key_id: "k1",
            party: "acme",
            algorithm: "ssh-ed25519",
            blob: "AAAA",
            from: &["127.0.0.1".to_owned(), "10.0.0.0/8".to_owned()],
            expires_at: Some(1_798_761_600), // 2027-01-01T00:00:00Z
        };
        assert_eq!(
            authorized_keys_line(
                &line,
                Path::new("/usr/local/bin/evosync-gate"),
                Path::new("/etc/evosync/evosync.yaml")
            ),
            "command=\"/usr/local/bin/evosync-gate --config /etc/evosync/evosync.yaml --key k1\",restrict,\
             from=\"127.0.0.1,10.0.0.0/8\",expiry-time=\"20270101000000Z\" ssh-ed25519 AAAA evosync:acme:k1"
        );
        assert!(path_is_plain(Path::new("/usr/local/bin/evosync-gate")));
        assert!(!path_is_plain(Path::new("/opt/my \"gate\"")));
        assert!(!path_is_plain(Path::new("relative")));
    }
}
