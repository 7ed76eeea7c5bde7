//! Fuzzes the upload name checks: any `subdir` and file name a worker may send. Nothing may panic, and what is
//! accepted is a folder under analysisResults/ or generationFeatures/ made of plain segments, and a plain file name
//! with an accepted extension that names no database.
#![no_main]

use evosync::names::{check_file_name, check_subdir, is_plain_segment, UPLOAD_ROOTS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (subdir, name) = text.split_once('\n').unwrap_or((text, ""));
    if let Ok(segments) = check_subdir(subdir) {
        assert!(UPLOAD_ROOTS.contains(&segments[0]));
        assert!(segments.iter().all(|s| is_plain_segment(s) && *s != "." && *s != ".."));
        assert_eq!(segments.join("/"), subdir);
    }
    let extensions = [".json.gz".to_owned(), ".json".to_owned()];
    if check_file_name(name, &extensions).is_ok() {
        assert!(is_plain_segment(name) && !name.contains('/'));
        let lower = name.to_ascii_lowercase();
        assert!(!lower.contains(".sqlite") && !lower.contains(".db"));
        assert!(name.ends_with(".json") || name.ends_with(".json.gz"));
    }
});
