//! Names that become path segments on the central host: parties, runs, databases, and the folders and file names of
//! uploaded analysis files. Pure checks, shared by the gate and the service.
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

pub const DEFAULT_SUBDIR: &str = "analysisResults";
/// Top folders a worker may upload into.
pub const UPLOAD_ROOTS: [&str; 2] = ["analysisResults", "generationFeatures"];
/// Folders a worker may nest under `analysisResults` or `generationFeatures` (every push walks them).
pub const MAX_SUBDIR_DEPTH: usize = 4;
pub const MAX_SUBDIR_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("subdir '{0}' is not accepted: use analysisResults, generationFeatures, or a folder under them")]
    Subdir(String),
    #[error(
        "subdir '{subdir}' is over the limits of a folder: at most {MAX_SUBDIR_DEPTH} folders under \
             analysisResults or generationFeatures, and {MAX_SUBDIR_BYTES} bytes"
    )]
    SubdirTooDeep { subdir: String },
    #[error("file name '{0}' is not a plain file name ([A-Za-z0-9._-], no folders)")]
    Name(String),
    #[error("file name '{name}' does not end in an accepted extension ({accepted})")]
    Extension { name: String, accepted: String },
    #[error("file name '{0}' names a database; databases are pushed with sqlite3_rsync, not uploaded")]
    Database(String),
}

/// Checks `subdir` segment by segment; returns its segments.
pub fn check_subdir(subdir: &str) -> Result<Vec<&str>, NameError> {
    let fail = || NameError::Subdir(subdir.to_owned());
    let too_deep = || NameError::SubdirTooDeep { subdir: subdir.chars().take(64).collect() };
    if subdir.len() > MAX_SUBDIR_BYTES {
        return Err(too_deep());
    }
    let segments: Vec<&str> = subdir.split('/').collect();
    if !UPLOAD_ROOTS.contains(&segments[0]) {
        return Err(fail());
    }
    if segments.len() > 1 + MAX_SUBDIR_DEPTH {
        return Err(too_deep());
    }
    if segments.iter().all(|s| is_plain_segment(s)) {
        Ok(segments)
    } else {
        Err(fail())
    }
}

/// Checks an uploaded file's name against the policy's extensions; database files are refused whatever they say.
pub fn check_file_name(name: &str, extensions: &[String]) -> Result<(), NameError> {
    if !is_plain_segment(name) {
        return Err(NameError::Name(name.to_owned()));
    }
    let lower = name.to_ascii_lowercase();
    if lower.contains(".sqlite") || lower.contains(".db") {
        return Err(NameError::Database(name.to_owned()));
    }
    if extensions.iter().any(|ext| name.len() > ext.len() && name.ends_with(ext.as_str())) {
        Ok(())
    } else {
        Err(NameError::Extension { name: name.to_owned(), accepted: extensions.join(", ") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdirs_are_checked_segment_by_segment() {
        for ok in ["analysisResults", "analysisResults/trees", "generationFeatures", "analysisResults/a/b/c/d"] {
            assert!(check_subdir(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/analysisResults",
            "analysisResults/",
            "analysisResults/../x",
            "analysisResults/./x",
            "..",
            "other",
            "analysisResults//x",
            "analysisResults/a b",
            "analysisResults/\0",
            "analysisResults/a/b/c/d/e",
            "generationFeatures/a/b/c/d/e/f/g/h",
            "analysisResults\\x",
        ] {
            assert!(check_subdir(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_names() {
        let ext = vec![".json.gz".to_owned(), ".json".to_owned()];
        assert!(check_file_name("coverage_01KF_step-1.json.gz", &ext).is_ok());
        assert!(check_file_name("x.json", &ext).is_ok());
        for bad in [
            "../x.json",
            "a/b.json",
            ".json",
            ".hidden.json",
            "x.txt",
            "lineage_state_1.sqlite",
            "genomes.sqlite.json",
            "x.db.json",
            "",
            "a\0.json",
        ] {
            assert!(check_file_name(bad, &ext).is_err(), "{bad:?}");
        }
    }

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
