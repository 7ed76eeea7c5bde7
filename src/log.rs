//! The one structured log line of evosync, for the gate and the service alike:
//! `PROGRAM key=value key="quoted value" …`, optionally ending in one JSON object (an event's payload).
//!
//! The gate sends its lines to syslog and `audit_log` (`gate::audit`); the service writes them to stderr (the journal
//! under systemd). Either way a line is built here and written whole, with one `write`.

use std::fmt::Write as _;
use std::io::Write as _;

/// The program name that starts the gate's lines.
pub const GATE: &str = "evosync-gate";
/// The program name that starts the service's lines.
pub const SERVE: &str = "evosync-serve";

/// One line: `evosync-gate party=acme event=decision verdict=refuse reason="..."`.
#[derive(Debug, Clone, Default)]
pub struct Line {
    text: String,
    /// Fields for the host's own log only (syslog, audit_log), never for stderr, which sshd sends to the worker.
    private: String,
    pub warning: bool,
}

impl Line {
    /// A line of the gate's; callers add `event=` with the rest of the fields.
    pub fn new() -> Line {
        Line::of(GATE)
    }

    /// A line of `program` (`GATE` or `SERVE`).
    pub fn of(program: &str) -> Line {
        let mut line = Line { text: String::with_capacity(256), private: String::new(), warning: false };
        line.text.push_str(program);
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

    /// Ends the line with an event's JSON object (one line of JSON: serde_json escapes every control character).
    pub fn payload(mut self, json: &serde_json::Value) -> Line {
        let _ = write!(self.text, " {json}");
        self
    }

    /// Writes the public line to stderr with one `write` (stderr is unbuffered; `eprintln!` would write it in pieces,
    /// and concurrent lines could interleave).
    pub fn to_stderr(&self) {
        let mut bytes = Vec::with_capacity(self.text.len() + 1);
        bytes.extend_from_slice(self.text.as_bytes());
        bytes.push(b'\n');
        let _ = std::io::stderr().lock().write_all(&bytes);
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
        let event = Line::of(SERVE).field("event", "upload").payload(&serde_json::json!({"name": "a\nb"}));
        assert_eq!(event.public(), "evosync-serve event=upload {\"name\":\"a\\nb\"}");
        assert_eq!(
            line.public(),
            "evosync-gate event=decision party=acme reason=\"a \\\"quoted\\\" reason\" command=\"x\\x0ay\\\\z\" empty=\"\""
        );
    }
}
