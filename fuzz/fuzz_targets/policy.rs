//! Fuzzes the policy loader: any bytes as a party's YAML policy. Nothing may panic, and whatever loads must keep the
//! invariants the gate relies on: a party name, plain run names only, databases that are plain `.sqlite`/`.db` names,
//! upload extensions that never name a database, limits within their bounds.
#![no_main]

use evosync::names::{is_party_name, is_plain_segment};
use evosync::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(policy) = Policy::parse(text) else { return };
    assert!(is_party_name(&policy.party));
    assert!(!policy.databases.is_empty());
    for database in &policy.databases {
        assert!(is_plain_segment(database) && (database.ends_with(".sqlite") || database.ends_with(".db")));
    }
    for extension in &policy.uploads.extensions {
        assert!(extension.starts_with('.') && !extension.contains(".sqlite") && !extension.contains(".db"));
    }
    for prefix in &policy.path_prefixes {
        assert!(prefix.starts_with('/') && prefix[1..].split('/').all(is_plain_segment));
    }
    let limits = &policy.limits;
    assert!((1..=64).contains(&limits.max_concurrent_syncs) && limits.max_sync_seconds >= 1);
    assert!(limits.max_db_bytes.0 > 0 && limits.max_party_files > 0);
    assert!(policy.uploads.requests_per_second >= 1 && policy.uploads.max_parts_per_request >= 1);
    // Whatever the pattern says, a run name is one plain segment.
    for run in ["..", ".", "a/b", "", "-x", ".hidden", &"a".repeat(256)] {
        assert!(!policy.allows_run_name(run), "{run:?}");
    }
});
