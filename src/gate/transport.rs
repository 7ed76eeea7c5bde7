//! How a session reached sshd, and the one-party rule of the tunnel.
//!
//! `evosync serve` offers SSH over a WebSocket (`GET /api/sync/ssh`) to parties behind firewalls: the worker's API
//! key opens the tunnel, then its SSH key logs in through it and the gate decides as for any session. The two keys
//! must be one party's. The service records the address of each tunnel's TCP connection to sshd with the party of
//! the API key that opened it; sshd names the same connection in `SSH_CONNECTION` (`CLIENT_IP CLIENT_PORT
//! SERVER_IP SERVER_PORT`), and the gate asks the service whose tunnel, if any, it is (`broker::Request::Transport`).
//! A tunnel of another party is refused before anything is looked at or created.
//!
//! Tunnels live in the service: without it none is open. But a gate that cannot ask it (it does not answer, or
//! this account cannot reach it) cannot tell a tunnelled session from a direct one from this host, so when the
//! configuration names a `tunnel_ssh`, a session from this host is then refused rather than guessed about.

use super::central::Central;
use super::refusal::{Refusal, RefusalCode};
use crate::store::Transport;
use std::net::{IpAddr, SocketAddr};

/// The two ends of the session's TCP connection, as sshd saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SshSession {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl SshSession {
    /// Parses `SSH_CONNECTION`; `None` for anything else (sshd always sets it; a gate run by hand has none).
    pub fn parse(value: &str) -> Option<SshSession> {
        let mut words = value.split_ascii_whitespace();
        let mut address = || -> Option<SocketAddr> {
            let ip: IpAddr = words.next()?.parse().ok()?;
            let port: u16 = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip.to_canonical(), port))
        };
        let (client, server) = (address()?, address()?);
        words.next().is_none().then_some(SshSession { client, server })
    }

    /// A session from this very host: loopback, or from the address sshd was reached at.
    pub fn from_this_host(&self) -> bool {
        self.client.ip().is_loopback() || self.client.ip() == self.server.ip()
    }
}

/// How the session came in, as far as the service knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    Direct,
    /// Through a tunnel opened with an API key of this party (`None`: another party's than the asking account's).
    Tunnel {
        party: Option<String>,
    },
}

impl Via {
    pub fn transport(&self) -> Transport {
        match self {
            Via::Direct => Transport::Ssh,
            Via::Tunnel { .. } => Transport::WebSocket,
        }
    }
}

/// Asks how the session came in. `tunnels_configured`: whether this host's configuration names a `tunnel_ssh`.
pub fn via(central: &Central, session: Option<SshSession>, tunnels_configured: bool) -> Result<Via, Refusal> {
    let Some(session) = session else { return Ok(Via::Direct) };
    match central {
        Central::Service(_) => central.tunnel_of(session),
        _ if tunnels_configured && session.from_this_host() => Err(Refusal::with_detail(
            RefusalCode::TunnelUnverifiable,
            format!(
                "the service does not answer, and a session from {} may have come through its tunnel",
                session.client
            ),
        )),
        _ => Ok(Via::Direct),
    }
}

/// The one-party rule: a tunnelled session's SSH key must be the party of the API key that opened the tunnel.
pub fn one_party(via: &Via, party: &str) -> Result<(), Refusal> {
    match via {
        Via::Direct => Ok(()),
        Via::Tunnel { party: Some(tunnel) } if tunnel == party => Ok(()),
        Via::Tunnel { party: tunnel } => Err(Refusal::with_detail(
            RefusalCode::TunnelOfAnotherParty { party: party.to_owned() },
            format!("the tunnel was opened with an API key of {}", tunnel.as_deref().unwrap_or("another party")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_connection_is_read_exactly() {
        let session = SshSession::parse("127.0.0.1 51234 127.0.0.1 22").unwrap();
        assert_eq!(session.client, "127.0.0.1:51234".parse().unwrap());
        assert_eq!(session.server, "127.0.0.1:22".parse().unwrap());
        assert!(session.from_this_host());
        let mapped = SshSession::parse("::ffff:192.0.2.7 40000 ::ffff:192.0.2.1 22").unwrap();
        assert_eq!(mapped.client, "192.0.2.7:40000".parse().unwrap(), "IPv4-mapped addresses as IPv4");
        assert!(!mapped.from_this_host());
        assert!(SshSession::parse("192.0.2.1 22 192.0.2.1 22").unwrap().from_this_host());
        for bad in ["", "127.0.0.1 51234 127.0.0.1", "127.0.0.1 x 127.0.0.1 22", "h 1 h 2", "1.1.1.1 1 2.2.2.2 2 3"] {
            assert_eq!(SshSession::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_tunnel_serves_its_own_party_only() {
        assert!(one_party(&Via::Direct, "acme").is_ok());
        assert!(one_party(&Via::Tunnel { party: Some("acme".into()) }, "acme").is_ok());
        let refusal = one_party(&Via::Tunnel { party: Some("beta".into()) }, "acme").unwrap_err();
        assert!(matches!(&refusal.code, RefusalCode::TunnelOfAnotherParty { party } if party == "acme"));
        assert!(refusal.detail.unwrap().contains("beta"), "the host's log names the tunnel's party");
        assert!(one_party(&Via::Tunnel { party: None }, "acme").is_err());
        assert_eq!(Via::Tunnel { party: None }.transport(), Transport::WebSocket);
    }

    #[test]
    fn without_the_service_a_session_from_this_host_is_not_guessed_about() {
        let local = SshSession::parse("127.0.0.1 40000 127.0.0.1 22");
        let remote = SshSession::parse("192.0.2.7 40000 192.0.2.1 22");
        let refused = via(&Central::Absent, local, true).unwrap_err();
        assert!(matches!(refused.code, RefusalCode::TunnelUnverifiable));
        assert_eq!(via(&Central::Absent, remote, true).unwrap(), Via::Direct);
        assert_eq!(via(&Central::Absent, local, false).unwrap(), Via::Direct, "no tunnel configured");
        assert_eq!(via(&Central::Absent, None, true).unwrap(), Via::Direct, "not run by sshd");
    }
}
