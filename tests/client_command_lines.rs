//! Compliance: the exact `SSH_ORIGINAL_COMMAND` strings the stock sqlite3_rsync client and the worker sync manager
//! send, learned through a logging forced command on a real sshd. The gate's grammar (src/gate/command.rs) accepts
//! exactly these; if a new client sends something else, this test says what.

mod common;

use common::Sshd;
use std::cell::RefCell;
use std::path::Path;

const RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_run";
const RETRY: &str = "PATH=$HOME/bin:/usr/local/bin:/opt/homebrew/bin:/opt/local/bin:$PATH ";

/// Runs `act` against an sshd whose forced command logs SSH_ORIGINAL_COMMAND and fails; returns the logged commands.
fn captured(log: &Path, seen: &RefCell<Vec<String>>, act: impl FnOnce()) -> Vec<String> {
    let _ = std::fs::remove_file(log);
    act();
    let commands: Vec<String> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .split("\u{1e}\n")
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    seen.borrow_mut().extend(commands.iter().cloned());
    commands
}

#[test]
fn the_stock_client_and_the_worker_send_these_command_lines() {
    let dir = common::test_dir("command-lines");
    let log_dir = dir.path().join("log");
    std::fs::create_dir(&log_dir).unwrap();
    common::chown_to(&log_dir, "evosync");
    let log = log_dir.join("commands");
    let logger = dir.path().join("log-command.sh");
    // A record separator between commands, so a command holding a newline would still show as one.
    common::write_executable(
        &logger,
        &format!("#!/bin/sh\nprintf '%s\\036\\n' \"$SSH_ORIGINAL_COMMAND\" >> {}\nexit 1\n", log.display()),
    );
    let sshd = Sshd::start(&format!("Match User evosync\n    ForceCommand {}\n", logger.display()));
    let (key, public) = sshd.new_client_key("worker");
    sshd.set_authorized_keys("evosync", &format!("{public}\n"));
    let local = dir.path().join("genomes.sqlite");
    common::make_db(&local, "genomes", 10, 100);
    let remote = format!("/data/evorun-sync/{RUN}/genomes.sqlite");
    let seen = RefCell::new(Vec::new());
    let push = |extra: &[&str]| {
        captured(&log, &seen, || {
            let output = sshd.sqlite3_rsync(&key, &local, "evosync", &remote, extra);
            assert!(!output.status.success(), "the logging command refuses everything");
        })
    };

    let first = format!("sqlite3_rsync --replica genomes.sqlite {remote} 2>/dev/null");
    let retry = format!("{RETRY}sqlite3_rsync --replica genomes.sqlite {remote}");
    assert_eq!(push(&[]), vec![first.clone(), retry.clone()], "plain push: first attempt, then the retry");

    let exe = "/usr/local/bin/sqlite3_rsync";
    assert_eq!(
        push(&["--exe", exe]),
        vec![
            format!("{exe} --replica genomes.sqlite {remote} 2>/dev/null"),
            format!("{RETRY}{exe} --replica genomes.sqlite {remote}")
        ],
        "--exe names the program"
    );
    assert_eq!(
        push(&["--wal-only"]),
        vec![
            format!("sqlite3_rsync --replica --wal-only genomes.sqlite {remote} 2>/dev/null"),
            format!("{RETRY}sqlite3_rsync --replica --wal-only genomes.sqlite {remote}")
        ]
    );
    assert_eq!(
        push(&["--commcheck"]),
        vec![
            format!("sqlite3_rsync --replica --commcheck genomes.sqlite {remote} 2>/dev/null"),
            format!("{RETRY}sqlite3_rsync --replica --commcheck genomes.sqlite {remote}")
        ]
    );
    assert_eq!(
        push(&["-vv"]),
        vec![
            format!("sqlite3_rsync --replica genomes.sqlite {remote}"),
            format!("{RETRY}sqlite3_rsync --replica genomes.sqlite {remote}")
        ],
        "-vv drops the redirect"
    );

    let pulled = dir.path().join("pulled.sqlite");
    let pull = captured(&log, &seen, || {
        let output = std::process::Command::new(common::sqlite3_rsync_path())
            .arg(format!("evosync@127.0.0.1:{remote}"))
            .arg(&pulled)
            .arg("--ssh")
            .arg(sshd.ssh_wrapper(&key))
            .output()
            .unwrap();
        assert!(!output.status.success());
    });
    assert_eq!(
        pull,
        vec![
            format!("sqlite3_rsync --origin {remote} pulled.sqlite 2>/dev/null"),
            format!("{RETRY}sqlite3_rsync --origin {remote} pulled.sqlite")
        ]
    );

    // The worker sync manager: ssh HOST 'mkdir -p "PATH/RUN"' (its quotes arrive; the gate's grammar removes them).
    let mkdir = captured(&log, &seen, || {
        sshd.ssh(&key, "evosync", &format!("mkdir -p \"/data/evorun-sync/{RUN}\""));
    });
    assert_eq!(mkdir, vec![format!("mkdir -p \"/data/evorun-sync/{RUN}\"")]);

    // Every line captured here is one the gate's grammar accepts.
    for command in seen.borrow().iter() {
        assert!(evosync::gate::command::parse(command).is_ok(), "the grammar refuses {command:?}");
    }
}
