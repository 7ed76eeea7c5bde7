//! Request bodies: the bounded read behind every JSON body (`JsonBody`, at most `JSON_BODY_LIMIT`, refused on its
//! Content-Length before a byte is read), the stall guard the listener puts around every body (`StallGuard`: a body
//! that delivers nothing for `http.body_stall_seconds` ends in an error), and the one mapping of a body's errors to
//! an `ApiError`.
//!
//! Uploads stream through `upload` under their own limits; every other body goes through `read_bounded`.

use super::error::ApiError;
use super::state::Shared;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap};
use futures_util::StreamExt;
use http_body::{Body as HttpBody, Frame, SizeHint};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The largest JSON body any route takes (registrations and every admin request).
pub const JSON_BODY_LIMIT: usize = 64 * 1024;

/// A JSON request body of at most `JSON_BODY_LIMIT` bytes, parsed into `T`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Shared> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &Shared) -> Result<JsonBody<T>, ApiError> {
        let bytes = read_bounded(request, JSON_BODY_LIMIT).await?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| ApiError::BadJson(e.to_string()))
    }
}

/// The whole body, when it is at most `limit` bytes: refused at once when its Content-Length says more, and as soon
/// as more arrives otherwise (a chunked body), so no more than `limit` (plus one chunk) is ever held.
pub async fn read_bounded(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    if declared_length(request.headers()).is_some_and(|length| length > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let mut stream = request.into_body().into_data_stream();
    let mut whole = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(body_error)?;
        if whole.len() + chunk.len() > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        whole.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(whole))
}

/// The Content-Length the client announced.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Why a body's stream failed: it stalled (`StallGuard`), or it broke off (the client went away, or sent a broken
/// chunked encoding).
pub fn body_error(error: axum::Error) -> ApiError {
    let inner = error.into_inner();
    match inner.downcast::<Stalled>() {
        Ok(stalled) => ApiError::BodyStalled { seconds: stalled.after.as_secs() },
        Err(other) => ApiError::BrokenOff(other.to_string()),
    }
}

/// The error a stalled body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body delivered nothing for {} s", .after.as_secs())]
pub struct Stalled {
    after: Duration,
}

/// A request body that fails with `Stalled` when it delivers nothing for `after` while someone waits for it. Time
/// spent by the handler elsewhere (on the disk, say) does not count: the clock runs only while a read is pending.
pub struct StallGuard<B> {
    inner: B,
    after: Duration,
    /// Armed while a read is pending; re-armed by each frame that arrives.
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl<B> StallGuard<B> {
    pub fn new(inner: B, after: Duration) -> StallGuard<B> {
        StallGuard { inner, after, timer: None, waiting: false }
    }
}

impl<B> HttpBody for StallGuard<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = Instant::now() + this.after;
                if !this.waiting {
                    this.waiting = true;
                    match &mut this.timer {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                match this.timer.as_mut().map(|timer| timer.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Some(Err(Box::new(Stalled { after: this.after })))),
                    _ => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body of the request as the router takes it.
pub fn guarded<B>(inner: B, after: Duration) -> Body
where
    B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Body::new(StallGuard::new(inner, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body fed through a channel, chunk by chunk.
    struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

    impl HttpBody for Fed {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_delivers_nothing_fails_after_the_stall_time() {
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        let mut stream = guarded(Fed(receiver), Duration::from_secs(5)).into_data_stream();
        sender.send(Bytes::from_static(b"abc")).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), "abc");
        // Nothing for 4 s of waiting, then a chunk: still fine.
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            sender.send(Bytes::from_static(b"d")).await.unwrap();
            sender
        });
        assert_eq!(stream.next().await.unwrap().unwrap(), "d");
        let _sender = late.await.unwrap();
        // Time spent away from the body does not count.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let started = Instant::now();
        let error = stream.next().await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(matches!(body_error(error), ApiError::BodyStalled { seconds: 5 }));
    }
}
