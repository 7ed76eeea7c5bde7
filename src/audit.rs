//! Audit: each gate decision and each outcome is one structured `key=value` line, to syslog (LOG_AUTH by default) and
//! to `audit_log` when the configuration names one; to stderr where neither is available, so no record is lost.

use crate::config::SyslogFacility;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// One line: `evosync-gate party=acme event=decision verdict=refuse reason="..."`.
#[derive(Debug, Clone, Default)]
pub struct Line {
    text: String,
    /// Fields for the host's own log only (syslog, audit_log), never for stderr, which sshd sends to the worker.
    private: String,
    pub warning: bool,
}

impl Line {
    /// An empty line; callers add `event=` with the rest of the fields.
    pub fn new() -> Line {
        let mut line = Line { text: String::with_capacity(256), private: String::new(), warning: false };
        line.text.push_str("evosync-gate");
        line
    }

    /// Adds `key=value`, quoting the value when it holds anything but plain characters.
    pub fn field(mut self, key: &str, value: impl std::fmt::Display) -> Line {
        push_field(&mut self.text, key, &value.to_string());
        self
    }

    /// Adds a field that only the host's own log sees (paths and errors of the host's configuration).
    pub fn private_field(mut self, key: &str, value: impl std::fmt::Display) -> Line {
        push_field(&mut self.private, key, &value.to_string());
        self
    }

    pub fn private_field_opt(self, key: &str, value: Option<impl std::fmt::Display>) -> Line {
        match value {
            Some(value) => self.private_field(key, value),
            None => self,
        }
    }

    pub fn field_opt(self, key: &str, value: Option<impl std::fmt::Display>) -> Line {
        match value {
            Some(value) => self.field(key, value),
            None => self,
        }
    }

    pub fn warning(mut self) -> Line {
        self.warning = true;
        self
    }

    /// The whole line, private fields included.
    pub fn full(&self) -> String {
        format!("{}{}", self.text, self.private)
    }

    /// The line without its private fields.
    pub fn public(&self) -> &str {
        &self.text
    }
}

fn push_field(out: &mut String, key: &str, value: &str) {
    let plain = !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:+@,".contains(&b));
    let _ = write!(out, " {key}=");
    if !plain {
        out.push('"');
    }
    for ch in value.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    if !plain {
        out.push('"');
    }
}

/// Where audit lines go.
pub struct Sink {
    facility: SyslogFacility,
    file: Option<std::path::PathBuf>,
}

impl Sink {
    pub fn new(facility: SyslogFacility, file: Option<&Path>) -> Sink {
        Sink { facility, file: file.map(Path::to_owned) }
    }

    /// Writes the line to syslog and to `audit_log`; to stderr only when neither took it, so no record is lost.
    pub fn write(&self, line: &Line) {
        if !self.write_host_side(line) {
            let _ = writeln!(std::io::stderr().lock(), "{}", line.public());
        }
    }

    /// Writes the line to syslog and to `audit_log`; false when neither took it.
    pub fn write_host_side(&self, line: &Line) -> bool {
        let full = line.full();
        let logged = self.to_syslog(&full, line.warning);
        let filed = match &self.file {
            // One write of a whole line with O_APPEND: concurrent gates never interleave within a line.
            Some(path) => std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .and_then(|mut file| file.write_all(format!("{full}\n").as_bytes()))
                .is_ok(),
            None => false,
        };
        logged || filed
    }

    fn to_syslog(&self, full: &str, warning: bool) -> bool {
        let formatter = syslog::Formatter3164 {
            facility: facility(self.facility),
            hostname: None,
            process: "evosync-gate".into(),
            pid: std::process::id(),
        };
        let Ok(mut logger) = syslog::unix(formatter) else {
            return false;
        };
        let text = full.strip_prefix("evosync-gate ").unwrap_or(full);
        if warning { logger.warning(text) } else { logger.info(text) }.is_ok()
    }
}

fn facility(facility: SyslogFacility) -> syslog::Facility {
    use syslog::Facility as F;
    use SyslogFacility as S;
    match facility {
        S::Auth => F::LOG_AUTH,
        S::Authpriv => F::LOG_AUTHPRIV,
        S::Daemon => F::LOG_DAEMON,
        S::User => F::LOG_USER,
        S::Local0 => F::LOG_LOCAL0,
        S::Local1 => F::LOG_LOCAL1,
        S::Local2 => F::LOG_LOCAL2,
        S::Local3 => F::LOG_LOCAL3,
        S::Local4 => F::LOG_LOCAL4,
        S::Local5 => F::LOG_LOCAL5,
        S::Local6 => F::LOG_LOCAL6,
        S::Local7 => F::LOG_LOCAL7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_only_when_needed_and_never_break_the_line() {
        let line = Line::new()
            .field("event", "decision")
            .field("party", "acme")
            .field("reason", "a \"quoted\" reason")
            .field("command", "x\ny\\z")
            .field("empty", "")
            .private_field("detail", "/etc/x");
        assert!(line.full().ends_with(" empty=\"\" detail=/etc/x"));
        assert_eq!(
            line.public(),
            "evosync-gate event=decision party=acme reason=\"a \\\"quoted\\\" reason\" command=\"x\\x0ay\\\\z\" empty=\"\""
        );
    }
}
