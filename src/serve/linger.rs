//! The lingering close of a connection whose last answer left its request's body unread (a 401, 403, 413, 429 or
//! 507 answered before the body was read, a form refused halfway), as nginx's does: once the answer is out and our
//! half of the connection is shut, what the client still sends is read and discarded, until it closes its side or a
//! bound is reached (`http.linger_seconds` in all, `http.linger_idle_seconds` without a byte, `http.linger_bytes`).
//! Closing with those bytes unread would make the kernel answer them with a reset, and a client that writes its
//! whole body before it reads (Node's `http.request`, Python's urllib) would see a broken pipe instead of the answer.
//!
//! `listen` decides when a connection lingers and runs the drain from its stream's shutdown; this file owns the
//! drain, its bounds, and the one log line and counters of each lingering close.

use super::metrics::Metrics;
use crate::log::{Line, SERVE};
use crate::size::ByteSize;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The most one read of a lingering close takes at once (a buffer on the stack, so lingering holds no memory).
const DRAIN_CHUNK: usize = 16 * 1024;

/// The bounds of a lingering close: its whole time, its time without a byte, the bytes it discards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linger {
    pub time: Duration,
    pub idle: Duration,
    pub bytes: u64,
}

/// A lingering close under way: what it has discarded, and until when it may go on.
pub struct Drain {
    bounds: Linger,
    began: Instant,
    last_byte: Instant,
    drained: u64,
    /// Fires at the earlier of the whole drain's end and `bounds.idle` after the last byte.
    timer: Pin<Box<Sleep>>,
}

/// How a lingering close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LingerEnd {
    /// The client closed its side: it had read its answer, or given up.
    ClientClosed,
    /// The client reset the connection.
    ClientReset,
    /// `http.linger_bytes` were discarded and the client was still sending.
    Bytes,
    /// `http.linger_seconds` passed.
    Time,
    /// `http.linger_idle_seconds` passed without a byte.
    Idle,
}

impl LingerEnd {
    /// The `ended=` of the log line and the label of `evosync_lingering_closes_total`.
    fn label(self) -> &'static str {
        match self {
            LingerEnd::ClientClosed => "client-closed",
            LingerEnd::ClientReset => "client-reset",
            LingerEnd::Bytes => "bytes",
            LingerEnd::Time => "time",
            LingerEnd::Idle => "idle",
        }
    }
}

/// What a lingering close cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lingered {
    ended: LingerEnd,
    drained: u64,
    took: Duration,
}

impl Lingered {
    /// One log line and the counters of `/metrics`.
    pub fn record(&self, metrics: &Metrics, bounds: Linger, peer: Option<SocketAddr>) {
        metrics.add(&format!("evosync_lingering_closes_total{{ended=\"{}\"}}", self.ended.label()), 1);
        metrics.add("evosync_lingering_drained_bytes_total", self.drained);
        let why = match self.ended {
            LingerEnd::ClientClosed => "the client closed the connection after the answer".to_owned(),
            LingerEnd::ClientReset => "the client reset the connection after the answer".to_owned(),
            LingerEnd::Bytes => {
                format!("closed after discarding {} of an unread body (http.linger_bytes)", ByteSize(bounds.bytes))
            }
            LingerEnd::Time => {
                format!(
                    "closed while the client still sent an unread body, {} s after the answer (http.linger_seconds)",
                    bounds.time.as_secs()
                )
            }
            LingerEnd::Idle => {
                format!(
                    "closed after {} s without a byte from the client (http.linger_idle_seconds)",
                    bounds.idle.as_secs()
                )
            }
        };
        Line::of(SERVE)
            .field("event", "linger")
            .field("ended", self.ended.label())
            .field("drained", self.drained)
            .field("ms", self.took.as_millis())
            .field("message", why)
            .field_opt("client", peer)
            .to_stderr();
    }
}

impl Drain {
    pub fn new(bounds: Linger) -> Drain {
        let now = Instant::now();
        let timer = Box::pin(tokio::time::sleep_until(now + bounds.time.min(bounds.idle)));
        Drain { bounds, began: now, last_byte: now, drained: 0, timer }
    }

    /// Reads and discards from `reader` until the client closes, or a bound is reached.
    pub fn poll_drain<R: AsyncRead + Unpin>(&mut self, reader: &mut R, cx: &mut Context<'_>) -> Poll<Lingered> {
        let end = self.began + self.bounds.time;
        let mut scratch = [0u8; DRAIN_CHUNK];
        loop {
            if self.drained >= self.bounds.bytes {
                return Poll::Ready(self.ended(LingerEnd::Bytes));
            }
            if Instant::now() >= end {
                return Poll::Ready(self.ended(LingerEnd::Time));
            }
            let room = (self.bounds.bytes - self.drained).min(DRAIN_CHUNK as u64) as usize;
            let mut buf = ReadBuf::new(&mut scratch[..room]);
            match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    return Poll::Ready(self.ended(LingerEnd::ClientClosed))
                }
                Poll::Ready(Ok(())) => {
                    self.drained += buf.filled().len() as u64;
                    self.last_byte = Instant::now();
                }
                Poll::Ready(Err(_)) => return Poll::Ready(self.ended(LingerEnd::ClientReset)),
                Poll::Pending => break,
            }
        }
        let idle_end = self.last_byte + self.bounds.idle;
        let (deadline, why) = if end <= idle_end { (end, LingerEnd::Time) } else { (idle_end, LingerEnd::Idle) };
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(self.ended(why)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn ended(&self, ended: LingerEnd) -> Lingered {
        Lingered { ended, drained: self.drained, took: self.began.elapsed() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Linger = Linger { time: Duration::from_secs(5), idle: Duration::from_secs(2), bytes: 1 << 20 };

    /// Drains what `sends` writes into the other end of a pipe, under `BOUNDS`.
    async fn drain_of<F, Fut>(sends: F) -> Lingered
    where
        F: FnOnce(tokio::io::DuplexStream) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
        let sending = tokio::spawn(sends(theirs));
        let mut drain = Drain::new(BOUNDS);
        let lingered = std::future::poll_fn(|cx| drain.poll_drain(&mut ours, cx)).await;
        drop(ours);
        let _ = sending.await;
        lingered
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_ends_when_the_client_closes_or_at_each_bound() {
        use tokio::io::AsyncWriteExt;
        let closed = drain_of(|mut client| async move {
            let _ = client.write_all(&[7; 300_000]).await;
        })
        .await;
        assert_eq!((closed.ended, closed.drained), (LingerEnd::ClientClosed, 300_000));

        let flood = drain_of(|mut client| async move { while client.write_all(&[7; 50_000]).await.is_ok() {} }).await;
        assert_eq!((flood.ended, flood.drained), (LingerEnd::Bytes, BOUNDS.bytes));

        let silent = drain_of(|mut client| async move {
            let _ = client.write_all(&[7; 10]).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        })
        .await;
        assert_eq!((silent.ended, silent.drained), (LingerEnd::Idle, 10));
        assert_eq!(silent.took, BOUNDS.idle);

        let trickle = drain_of(|mut client| async move {
            while client.write_all(&[7; 1000]).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
        .await;
        assert_eq!(trickle.ended, LingerEnd::Time);
        assert_eq!(trickle.took, BOUNDS.time);
        assert_eq!(trickle.drained, 10_000, "a chunk each 500 ms for 5 s");
    }
}
