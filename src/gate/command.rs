//! The command grammar: what a worker may ask for in `SSH_ORIGINAL_COMMAND`.
//!
//! The accepted language is exactly what the stock sqlite3_rsync client and the worker sync manager send (see
//! `tests/client_command_lines.rs`, which records them from the real client):
//!
//! ```text
//! [PATH=$HOME/bin:/usr/local/bin:/opt/homebrew/bin:/opt/local/bin:$PATH ] PROGRAM (--replica|--origin)
//!     [--commcheck] [--wal-only] PEER_NAME PATH [2>/dev/null]
//! mkdir -p PATH
//! ```
//!
//! No shell ever sees the command: the gate runs the configured binary with an argument vector. The grammar is still a
//! strict subset of POSIX sh words, so a command means the same here as it would to the shell the worker expected, and
//! anything a shell would treat specially (operators, substitutions, globs, comments, escapes) is refused by name.

/// The longest command accepted. The real ones are well under 1 KiB even with a 255-byte run name.
pub const MAX_COMMAND_BYTES: usize = 4096;
/// The stock client's retry prefix (`add_path_argument` in sqlite3_rsync.c), sent after a first attempt failed.
pub const RETRY_PATH_PREFIX: &str = "PATH=$HOME/bin:/usr/local/bin:/opt/homebrew/bin:/opt/local/bin:$PATH ";
/// The stock client's first attempt ends with this (absent with `-vv` and on the retry).
pub const STDERR_REDIRECT: &str = " 2>/dev/null";
pub const PROGRAM_NAME: &str = "sqlite3_rsync";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Sync(SyncRequest),
    /// `mkdir -p "PATH/RUN"`, as the worker sync manager sends before its first push.
    MakeRunDir {
        path: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The worker is the origin; this host holds the replica (`--replica`).
    Push,
    /// The worker pulls; this host is the origin (`--origin`).
    Pull,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    pub direction: Direction,
    /// The program word as the worker named it; informational only, never run.
    pub program: String,
    pub retry_form: bool,
    pub stderr_redirect: bool,
    pub wal_only: bool,
    pub commcheck: bool,
    /// The file name on the worker's side (the client sends only its last component).
    pub peer_name: String,
    /// The path on this host (the replica of a push, the origin of a pull) as the worker wrote it, still virtual.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("no command was given (an interactive login); this account only serves sqlite3_rsync pushes")]
    Empty,
    #[error("the command is {0} bytes long; at most {MAX_COMMAND_BYTES} are accepted")]
    TooLong(usize),
    #[error("the command contains the control byte 0x{0:02x} (newline, NUL, tab, ...); send a single line")]
    ControlByte(u8),
    #[error("the command contains a non-ASCII byte; paths here are ASCII")]
    NonAscii,
    #[error("'{ch}' is not allowed: {why}")]
    Forbidden { ch: char, why: &'static str },
    #[error("a quote is not closed")]
    UnclosedQuote,
    #[error("'{0}' is not a program served here; only sqlite3_rsync (and mkdir -p for a run folder) are")]
    Program(String),
    #[error("mkdir is only accepted as: mkdir -p \"PATH/RUN\"")]
    MkdirForm,
    #[error("sqlite3_rsync must be called with --replica (push) or --origin (pull) first, not '{0}'")]
    Mode(String),
    #[error("option {0} is refused: it writes a file on the central host")]
    WritesHostFile(String),
    #[error("option '{0}' is not accepted (accepted: --commcheck, --wal-only)")]
    UnknownOption(String),
    #[error("option {0} is given twice")]
    RepeatedOption(String),
    #[error("expected two names after the options (the worker's database name and the replica path), got {0}")]
    Arity(usize),
    #[error("'{0}' is not a plain file name for the worker's database")]
    PeerName(String),
    #[error("the PATH= retry prefix and the 2>/dev/null redirect are only accepted around sqlite3_rsync")]
    Decoration,
}

/// Parses one `SSH_ORIGINAL_COMMAND`. Pure: no I/O, no allocation beyond the result.
pub fn parse(command: &str) -> Result<Request, CommandError> {
    if command.len() > MAX_COMMAND_BYTES {
        return Err(CommandError::TooLong(command.len()));
    }
    if let Some(&byte) = command.as_bytes().iter().find(|b| b.is_ascii_control()) {
        return Err(CommandError::ControlByte(byte));
    }
    if !command.is_ascii() {
        return Err(CommandError::NonAscii);
    }
    if command.trim().is_empty() {
        return Err(CommandError::Empty);
    }

    let (body, retry_form) = match command.strip_prefix(RETRY_PATH_PREFIX) {
        Some(rest) => (rest, true),
        None => (command, false),
    };
    let (body, stderr_redirect) = match body.strip_suffix(STDERR_REDIRECT) {
        Some(rest) => (rest, true),
        None => (body, false),
    };
    check_characters(body)?;
    let words = shell_words::split(body).map_err(|_| CommandError::UnclosedQuote)?;
    let Some((program, args)) = words.split_first() else {
        return Err(CommandError::Empty);
    };

    if program == "mkdir" {
        if retry_form || stderr_redirect {
            return Err(CommandError::Decoration);
        }
        return match args {
            [flag, path] if flag == "-p" => Ok(Request::MakeRunDir { path: path.clone() }),
            _ => Err(CommandError::MkdirForm),
        };
    }
    if program.rsplit('/').next() != Some(PROGRAM_NAME) {
        return Err(CommandError::Program(program.clone()));
    }
    parse_sync(program, args, retry_form, stderr_redirect).map(Request::Sync)
}

fn parse_sync(
    program: &str,
    args: &[String],
    retry_form: bool,
    stderr_redirect: bool,
) -> Result<SyncRequest, CommandError> {
    let (mode, rest) = args.split_first().ok_or_else(|| CommandError::Mode(String::new()))?;
    let direction = match mode.as_str() {
        "--replica" => Direction::Push,
        "--origin" => Direction::Pull,
        other => return Err(CommandError::Mode(other.to_owned())),
    };
    let (mut wal_only, mut commcheck) = (false, false);
    let mut names = Vec::with_capacity(2);
    for arg in rest {
        let flag = match arg.as_str() {
            "--wal-only" => &mut wal_only,
            "--commcheck" => &mut commcheck,
            "--errorfile" | "-errorfile" | "--debugfile" | "-debugfile" | "--logfile" | "-logfile" => {
                return Err(CommandError::WritesHostFile(arg.clone()))
            }
            option if option.starts_with('-') => return Err(CommandError::UnknownOption(option.to_owned())),
            _ => {
                names.push(arg);
                continue;
            }
        };
        // Options come before the names in what the client sends.
        if !names.is_empty() {
            return Err(CommandError::UnknownOption(arg.clone()));
        }
        if *flag {
            return Err(CommandError::RepeatedOption(arg.clone()));
        }
        *flag = true;
    }
    let [first, second] = names.as_slice() else {
        return Err(CommandError::Arity(names.len()));
    };
    // The client names the origin first: the worker's file for a push, this host's for a pull.
    let (peer_name, path) = match direction {
        Direction::Push => (first, second),
        Direction::Pull => (second, first),
    };
    // The client sends only the last component of its own file name, with "./" before a leading '-'.
    let peer = peer_name.strip_prefix("./").unwrap_or(peer_name);
    if peer.is_empty() || peer.contains('/') || peer == "." || peer == ".." || peer.len() > 255 {
        return Err(CommandError::PeerName(peer_name.to_string()));
    }
    Ok(SyncRequest {
        direction,
        program: program.to_owned(),
        retry_form,
        stderr_redirect,
        wal_only,
        commcheck,
        peer_name: peer_name.to_string(),
        path: path.to_string(),
    })
}

/// Refuses, by name, every character a shell would give a meaning beyond a literal word character or quote.
fn check_characters(body: &str) -> Result<(), CommandError> {
    for ch in body.chars() {
        let why = match ch {
            c if c.is_ascii_alphanumeric() => continue,
            ' ' | '_' | '.' | '/' | ':' | '=' | '@' | '%' | '+' | ',' | '-' | '\'' | '"' => continue,
            ';' | '&' | '|' => "shell operators are not accepted",
            '$' | '`' => "shell substitutions are not accepted",
            '<' | '>' => "redirections are not accepted (only the client's trailing 2>/dev/null)",
            '#' => "comments are not accepted",
            '*' | '?' | '[' | ']' | '{' | '}' | '~' => "glob and brace expansions are not accepted",
            '(' | ')' => "subshells are not accepted",
            '\\' => "backslash escapes are not accepted",
            '!' | '^' => "history expansion characters are not accepted",
            _ => "the character is not accepted",
        };
        return Err(CommandError::Forbidden { ch, why });
    }
    Ok(())
}

/// True when a refusal should be spoken in sqlite3_rsync's protocol: the command asked for sqlite3_rsync, so the
/// stock client is listening on the other end and prints `ERROR: <text>` for a protocol error message.
pub fn looks_like_sqlite3_rsync(command: &str) -> Option<Direction> {
    let body = command.strip_prefix(RETRY_PATH_PREFIX).unwrap_or(command);
    let mut words = body.split(' ').filter(|w| !w.is_empty());
    let program = words.next()?.trim_matches(['\'', '"']);
    if program.rsplit('/').next() != Some(PROGRAM_NAME) {
        return None;
    }
    match words.next()?.trim_matches(['\'', '"']) {
        "--replica" => Some(Direction::Push),
        "--origin" => Some(Direction::Pull),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN_PATH: &str = "/data/evorun-sync/01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_run/genomes.sqlite";

    fn push(path: &str) -> SyncRequest {
        SyncRequest {
            direction: Direction::Push,
            program: "sqlite3_rsync".into(),
            retry_form: false,
            stderr_redirect: true,
            wal_only: false,
            commcheck: false,
            peer_name: "genomes.sqlite".into(),
            path: path.into(),
        }
    }

    #[test]
    fn accepts_what_the_stock_client_and_the_worker_send() {
        let first = format!("sqlite3_rsync --replica genomes.sqlite {RUN_PATH} 2>/dev/null");
        let retry = format!("{RETRY_PATH_PREFIX}sqlite3_rsync --replica genomes.sqlite {RUN_PATH}");
        let exe = format!("/usr/local/bin/sqlite3_rsync --replica genomes.sqlite {RUN_PATH} 2>/dev/null");
        let flags = format!("sqlite3_rsync --replica --commcheck --wal-only genomes.sqlite {RUN_PATH} 2>/dev/null");
        let verbose = format!("sqlite3_rsync --replica genomes.sqlite {RUN_PATH}");
        let pull = format!("sqlite3_rsync --origin {RUN_PATH} local.sqlite 2>/dev/null");
        let dashed = format!("sqlite3_rsync --replica ./-odd.sqlite {RUN_PATH} 2>/dev/null");
        let table: Vec<(&str, Request)> = vec![
            (&first, Request::Sync(push(RUN_PATH))),
            (&retry, Request::Sync(SyncRequest { retry_form: true, stderr_redirect: false, ..push(RUN_PATH) })),
            (&exe, Request::Sync(SyncRequest { program: "/usr/local/bin/sqlite3_rsync".into(), ..push(RUN_PATH) })),
            (&flags, Request::Sync(SyncRequest { wal_only: true, commcheck: true, ..push(RUN_PATH) })),
            (&verbose, Request::Sync(SyncRequest { stderr_redirect: false, ..push(RUN_PATH) })),
            (
                &pull,
                Request::Sync(SyncRequest {
                    direction: Direction::Pull,
                    peer_name: "local.sqlite".into(),
                    ..push(RUN_PATH)
                }),
            ),
            (&dashed, Request::Sync(SyncRequest { peer_name: "./-odd.sqlite".into(), ..push(RUN_PATH) })),
            (
                "mkdir -p \"/data/evorun-sync/01KFYA32R09C5KJYNH1SM2W1DR_x\"",
                Request::MakeRunDir { path: "/data/evorun-sync/01KFYA32R09C5KJYNH1SM2W1DR_x".into() },
            ),
            ("mkdir -p '/data/r'", Request::MakeRunDir { path: "/data/r".into() }),
            ("mkdir -p /data/r", Request::MakeRunDir { path: "/data/r".into() }),
        ];
        for (command, expected) in table {
            assert_eq!(parse(command), Ok(expected), "{command}");
        }
    }

    #[test]
    fn refuses_with_a_reason() {
        use CommandError::*;
        let long = format!("sqlite3_rsync --replica g.sqlite /{}", "a".repeat(MAX_COMMAND_BYTES));
        let table: Vec<(&str, CommandError)> = vec![
            ("", Empty),
            ("   ", Empty),
            (&long, TooLong(long.len())),
            ("sqlite3_rsync --replica a b\nrm -rf /", ControlByte(b'\n')),
            ("sqlite3_rsync --replica a\0 b", ControlByte(0)),
            ("sqlite3_rsync\t--replica a b", ControlByte(b'\t')),
            ("sqlite3_rsync --replica a /é", NonAscii),
            ("sqlite3_rsync --replica a b; id", Forbidden { ch: ';', why: "shell operators are not accepted" }),
            ("sqlite3_rsync --replica a b && id", Forbidden { ch: '&', why: "shell operators are not accepted" }),
            ("sqlite3_rsync --replica a b | id", Forbidden { ch: '|', why: "shell operators are not accepted" }),
            ("sqlite3_rsync --replica a $(id)", Forbidden { ch: '$', why: "shell substitutions are not accepted" }),
            ("sqlite3_rsync --replica a `id`", Forbidden { ch: '`', why: "shell substitutions are not accepted" }),
            ("sqlite3_rsync --replica a '$HOME'", Forbidden { ch: '$', why: "shell substitutions are not accepted" }),
            (
                "sqlite3_rsync --replica a b >/tmp/x",
                Forbidden { ch: '>', why: "redirections are not accepted (only the client's trailing 2>/dev/null)" },
            ),
            ("sqlite3_rsync --replica a b # c", Forbidden { ch: '#', why: "comments are not accepted" }),
            (
                "sqlite3_rsync --replica a /x/*",
                Forbidden { ch: '*', why: "glob and brace expansions are not accepted" },
            ),
            ("sqlite3_rsync --replica a ~/x", Forbidden { ch: '~', why: "glob and brace expansions are not accepted" }),
            ("sqlite3_rsync --replica a (b)", Forbidden { ch: '(', why: "subshells are not accepted" }),
            ("sqlite3_rsync --replica a b\\ c", Forbidden { ch: '\\', why: "backslash escapes are not accepted" }),
            ("sqlite3_rsync --replica a 'b", UnclosedQuote),
            ("sh -c x", Program("sh".into())),
            ("/bin/sqlite3_rsync2 --replica a b", Program("/bin/sqlite3_rsync2".into())),
            ("scp -t /tmp", Program("scp".into())),
            ("mkdir /data/r", MkdirForm),
            ("mkdir -p /a /b", MkdirForm),
            ("mkdir -p /a 2>/dev/null", Decoration),
            ("sqlite3_rsync a b", Mode("a".into())),
            ("sqlite3_rsync", Mode(String::new())),
            ("sqlite3_rsync --replica --errorfile /tmp/e a b", WritesHostFile("--errorfile".into())),
            ("sqlite3_rsync --replica --debugfile /tmp/e a b", WritesHostFile("--debugfile".into())),
            ("sqlite3_rsync --replica --logfile /tmp/e a b", WritesHostFile("--logfile".into())),
            ("sqlite3_rsync --replica -v a b", UnknownOption("-v".into())),
            ("sqlite3_rsync --replica --protocol 1 a b", UnknownOption("--protocol".into())),
            ("sqlite3_rsync --replica --wal-only --wal-only a b", RepeatedOption("--wal-only".into())),
            ("sqlite3_rsync --replica a --wal-only b", UnknownOption("--wal-only".into())),
            ("sqlite3_rsync --replica a b c", Arity(3)),
            ("sqlite3_rsync --replica a", Arity(1)),
            ("sqlite3_rsync --replica ../x b", PeerName("../x".into())),
        ];
        for (command, expected) in table {
            assert_eq!(parse(command), Err(expected), "{command:?}");
        }
    }

    #[test]
    fn recognises_a_client_that_is_listening_for_protocol_errors() {
        assert_eq!(looks_like_sqlite3_rsync("sqlite3_rsync --replica a b; id"), Some(Direction::Push));
        assert_eq!(
            looks_like_sqlite3_rsync(&format!("{RETRY_PATH_PREFIX}/x/sqlite3_rsync --origin a b")),
            Some(Direction::Pull)
        );
        assert_eq!(looks_like_sqlite3_rsync("mkdir -p x"), None);
        assert_eq!(looks_like_sqlite3_rsync(""), None);
    }
}
