//! How a refusal reaches the worker: as an sqlite3_rsync protocol error message when the stock client is listening,
//! so it prints `ERROR: evosync-gate: <reason>`, and always as a line on stderr.

use super::command::Direction;
use std::io::Write;

/// `REPLICA_ERROR` in sqlite3_rsync.c: sent by the replica side (this host, for a push).
pub const REPLICA_ERROR: u8 = 0x62;
/// `ORIGIN_ERROR` in sqlite3_rsync.c: sent by the origin side (this host, for a pull).
pub const ORIGIN_ERROR: u8 = 0x43;

/// One protocol error message: the type byte, a 4-byte big-endian length, the text.
pub fn protocol_error(direction: Direction, text: &str) -> Vec<u8> {
    let kind = match direction {
        Direction::Push => REPLICA_ERROR,
        Direction::Pull => ORIGIN_ERROR,
    };
    let bytes = text.as_bytes();
    let mut message = Vec::with_capacity(5 + bytes.len());
    message.push(kind);
    message.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    message.extend_from_slice(bytes);
    message
}

/// Tells the worker why it was refused. `listening` says whether a stock sqlite3_rsync reads our stdout.
pub fn refuse(listening: Option<Direction>, reason: &str) {
    let text = format!("evosync-gate: {reason}");
    if let Some(direction) = listening {
        let mut out = std::io::stdout().lock();
        // The worker may already be gone; there is nobody left to tell then.
        let _ = out.write_all(&protocol_error(direction, &text)).and_then(|()| out.flush());
    }
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_one_replica_error_message() {
        let message = protocol_error(Direction::Push, "evosync-gate: no");
        assert_eq!(message[0], 0x62);
        assert_eq!(&message[1..5], &[0, 0, 0, 16]);
        assert_eq!(&message[5..], b"evosync-gate: no");
        assert_eq!(protocol_error(Direction::Pull, "x")[0], 0x43);
    }
}
