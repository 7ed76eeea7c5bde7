//! Names that become path segments on the central host: parties, runs, databases.
//!
//! These checks hold whatever a policy says: a policy's `run_pattern` can narrow what a run may be called, never widen
//! it past a single plain path segment.

/// The longest run folder name accepted (a Linux file name is at most 255 bytes).
pub const MAX_SEGMENT_BYTES: usize = 255;

/// True when `name` is one plain path segment made of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn is_plain_segment(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SEGMENT_BYTES
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Party names: lower-case, short, usable in a Unix account name (`evosync-NAME`) and a file name (`NAME.yaml`).
pub fn is_party_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_segments() {
        for ok in ["01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_run", "genomes.sqlite", "a", "A.b-c_d"] {
            assert!(is_plain_segment(ok), "{ok}");
        }
        let long = "a".repeat(256);
        for bad in ["", ".", "..", ".hidden", "-rf", "a/b", "a b", "a\0b", "é", long.as_str()] {
            assert!(!is_plain_segment(bad), "{bad:?}");
        }
    }

    #[test]
    fn party_names() {
        for ok in ["acme", "lab-2", "x", "a_b"] {
            assert!(is_party_name(ok), "{ok}");
        }
        for bad in ["", "Acme", "-x", "_x", "a.b", "a/b", "..", &"a".repeat(33)] {
            assert!(!is_party_name(bad), "{bad:?}");
        }
    }
}
