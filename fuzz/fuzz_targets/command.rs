//! Fuzzes the gate's pure decision path: any byte string as SSH_ORIGINAL_COMMAND, parsed and decided against a
//! permissive policy. Nothing may panic, and whatever is allowed must name a plain run folder and an allowed database.
#![no_main]

use evosync::gate::command::{parse, Request};
use evosync::gate::decide::{decide, Action};
use evosync::names::is_plain_segment;
use evosync::policy::Policy;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        Policy::parse("party: fuzz\npush: true\npull: true\ncreate_runs: true\npath_prefixes: [/data/evorun-sync]\nrun_pattern: '.*'\n")
            .expect("fuzz policy")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(command) = std::str::from_utf8(data) else { return };
    let Ok(request) = parse(command) else { return };
    // Anything accepted is one line of plain ASCII without a shell's special characters beyond the client's
    // fixed retry prefix and trailing redirect.
    assert!(command.is_ascii() && !command.bytes().any(|b| b.is_ascii_control()));
    let body = command.strip_prefix(evosync::gate::command::RETRY_PATH_PREFIX).unwrap_or(command);
    let body = body.strip_suffix(evosync::gate::command::STDERR_REDIRECT).unwrap_or(body);
    assert!(!body.contains([';', '&', '|', '$', '`', '<', '>', '(', ')', '\\', '*', '?', '#', '~']));
    if let Request::Sync(sync) = &request {
        assert!(!sync.peer_name.starts_with('-'));
    }
    let Ok(decision) = decide(&request, policy()) else { return };
    assert!(is_plain_segment(&decision.run), "run {:?}", decision.run);
    match decision.action {
        Action::MakeRunDir => assert!(decision.database.is_none()),
        _ => {
            let database = decision.database.as_deref().expect("a sync names a database");
            assert!(policy().databases.iter().any(|d| d == database));
        }
    }
});
