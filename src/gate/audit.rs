//! Where the gate's records go: each decision and each outcome is one `log::Line`, to syslog (LOG_AUTH by default)
//! and to `audit_log` when the configuration names one; to stderr where neither takes it, so no record is lost.

use crate::config::SyslogFacility;
use crate::log::Line;
use std::io::Write as _;
use std::path::Path;

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
            line.to_stderr();
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
            process: crate::log::GATE.into(),
            pid: std::process::id(),
        };
        let Ok(mut logger) = syslog::unix(formatter) else {
            return false;
        };
        let text = full.strip_prefix(crate::log::GATE).map(str::trim_start).unwrap_or(full);
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
