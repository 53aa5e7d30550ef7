//! The public listener's request bodies, bounded before any handler reads them: a body whose
//! `Content-Length` is over `server.max_body_bytes` is replaced by one that fails at once as too
//! large (so the route answers 413 without waiting for a byte of it), and every other body gets
//! a deadline, `server.body_read_timeout_secs` from the end of the headers, past which reading it
//! fails (`ApiError::from_body` makes that a 408). The routes still decide what to answer, in
//! their order (TeleCMI's wrong token is a 404 whatever the body), and read the body as before;
//! an unfinished request so holds at most `max_body_bytes` for at most that long.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::{Full, Limited};
use hyper::body::{Frame, SizeHint};

#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// Reading the body took longer than `server.body_read_timeout_secs`.
#[derive(Debug, thiserror::Error)]
#[error("the body did not arrive within {0} s")]
pub struct BodyTimedOut(pub u64);

pub async fn bound(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (parts, body) = req.into_parts();
    let body = if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        too_large()
    } else {
        Body::new(Deadline {
            inner: body,
            timeout: limits.timeout,
            sleep: Box::pin(tokio::time::sleep(limits.timeout)),
        })
    };
    next.run(Request::from_parts(parts, body)).await
}

/// A body that fails as over the limit at its first read, the way axum's own limit fails (so
/// the extractor's rejection is the usual 413 one).
fn too_large() -> Body {
    Body::new(Limited::new(Full::new(Bytes::from_static(b"-")), 0))
}

/// The request body, failing with `BodyTimedOut` once its deadline has passed.
struct Deadline {
    inner: Body,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(
                self.timeout.as_secs(),
            ))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    #[tokio::test]
    async fn the_too_large_body_fails_as_over_the_limit() {
        let err = to_bytes(too_large(), 1 << 20).await.unwrap_err();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        let mut found = false;
        while let Some(e) = source {
            found |= e.is::<http_body_util::LengthLimitError>();
            source = e.source();
        }
        assert!(found, "{err:?}");
    }

    fn deadline(body: Body, timeout: Duration) -> Body {
        Body::new(Deadline {
            inner: body,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        })
    }

    #[tokio::test]
    async fn a_body_that_does_not_finish_in_time_fails_and_one_that_does_passes() {
        let never =
            Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
        let started = std::time::Instant::now();
        let err = to_bytes(deadline(never, Duration::from_millis(50)), 1024)
            .await
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(50));
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        let mut found = false;
        while let Some(e) = source {
            found |= e.is::<BodyTimedOut>();
            source = e.source();
        }
        assert!(found, "{err:?}");

        let whole = deadline(Body::from("hello"), Duration::from_millis(50));
        assert_eq!(to_bytes(whole, 1024).await.unwrap(), "hello");
    }
}
