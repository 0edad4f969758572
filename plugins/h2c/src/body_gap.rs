//! Bodies that must keep moving between a client and an HTTP/1.1 backend, whose connection
//! each stream holds (a descriptor, and a slot of `SWITCHYARD_H2C_HTTP1_MAX`):
//!
//! - A request body that sends nothing for a while as the backend waits for it ends with
//!   [`Stalled`], and hyper then drops the backend request (and its connection) and the
//!   stream ([`GapLimited`]). The clock runs only while the body is asked for: a backend
//!   that does not read the body (its socket is full) is not the client's silence.
//! - A response body the client takes nothing of for as long (it grants no window, or
//!   does not read its socket) is dropped with what it holds ([`must_be_taken`]), and the
//!   stream ends when the client next makes room. The clock runs only after a part was
//!   handed on and until the next is asked for: a backend that is slow to send (a long
//!   poll, a stream of events) is not the client's doing.

use crate::proxy::{Body, BoxError};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The error a body ends with after `gap` of nothing.
#[derive(Debug)]
pub struct Stalled(pub Duration);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body sent nothing for {:?}", self.0)
    }
}

impl std::error::Error for Stalled {}

pub struct GapLimited<B> {
    inner: B,
    gap: Duration,
    /// When the body runs out of time if nothing comes: reset by each frame.
    deadline: Pin<Box<Sleep>>,
}

impl<B> GapLimited<B>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// `inner`, which must send something at least every `gap` from now on.
    pub fn limit(inner: B, gap: Duration) -> Body {
        GapLimited {
            inner,
            gap,
            deadline: Box::pin(tokio::time::sleep(gap)),
        }
        .boxed()
    }
}

impl<B> hyper::body::Body for GapLimited<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = Instant::now() + this.gap;
                this.deadline.as_mut().reset(next);
                Poll::Ready(frame.map(|result| result.map_err(Into::into)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled(this.gap))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body the client took nothing of in time: the backend connection is gone.
#[derive(Debug)]
pub struct Untaken(pub Duration);

impl std::fmt::Display for Untaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client took nothing of the answer for {:?}", self.0)
    }
}

impl std::error::Error for Untaken {}

/// A response body, with what it holds, until the client takes it or stops taking it.
struct Taking<T> {
    /// `None` once ended, or dropped for the client's stall.
    body: Option<(Body, T)>,
    /// When the last part was handed on, while the next has not been asked for.
    handed_at: Option<Instant>,
}

/// `body`, which must be taken part by part with no wait of `limit` or more for the
/// client; past that, `body` and `held` are dropped (by a task on the runtime: a body the
/// client does not take is not polled) and `on_drop` is called.
pub fn must_be_taken<T: Send + 'static>(
    body: Body,
    held: T,
    limit: Duration,
    on_drop: impl FnOnce() + Send + 'static,
) -> Body {
    let taking = Arc::new(Mutex::new(Taking {
        body: Some((body, held)),
        handed_at: None,
    }));
    tokio::spawn(watch(Arc::downgrade(&taking), limit, on_drop));
    MustBeTaken { taking, limit }.boxed()
}

/// Drops the body once it has waited `limit` for the client, or ends with it.
async fn watch<T>(taking: Weak<Mutex<Taking<T>>>, limit: Duration, on_drop: impl FnOnce()) {
    let mut wait = limit;
    loop {
        tokio::time::sleep(wait).await;
        let Some(taking) = taking.upgrade() else {
            return;
        };
        let mut taking = taking.lock().unwrap_or_else(|e| e.into_inner());
        match taking.handed_at.map(|at| at.elapsed()) {
            Some(waited) if waited >= limit => {
                let dropped = taking.body.take();
                drop(taking);
                if dropped.is_some() {
                    on_drop();
                }
                return;
            }
            Some(waited) => wait = limit - waited,
            None if taking.body.is_none() => return,
            None => wait = limit,
        }
    }
}

struct MustBeTaken<T> {
    taking: Arc<Mutex<Taking<T>>>,
    limit: Duration,
}

impl<T> hyper::body::Body for MustBeTaken<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut taking = self.taking.lock().unwrap_or_else(|e| e.into_inner());
        let Some((body, _)) = taking.body.as_mut() else {
            return Poll::Ready(Some(Err(Box::new(Untaken(self.limit)))));
        };
        let polled = Pin::new(body).poll_frame(cx);
        taking.handed_at = match &polled {
            Poll::Ready(Some(Ok(_))) => Some(Instant::now()),
            _ => None,
        };
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            // Ended: what it held goes now, not when hyper lets the body go.
            taking.body = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let taking = self.taking.lock().unwrap_or_else(|e| e.into_inner());
        taking
            .body
            .as_ref()
            .is_some_and(|(body, _)| body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let taking = self.taking.lock().unwrap_or_else(|e| e.into_inner());
        taking
            .body
            .as_ref()
            .map_or_else(SizeHint::default, |(body, _)| body.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's body: `frames` frames, each after `every`, then the end (or, with
    /// `silent_after`, nothing ever again).
    struct Paced {
        frames: usize,
        every: Duration,
        next: Pin<Box<Sleep>>,
        silent_after: bool,
    }

    impl Paced {
        fn new(frames: usize, every: Duration, silent_after: bool) -> Paced {
            let next = Box::pin(tokio::time::sleep(every));
            Paced {
                frames,
                every,
                next,
                silent_after,
            }
        }
    }

    impl hyper::body::Body for Paced {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.frames == 0 {
                return if self.silent_after {
                    Poll::Pending
                } else {
                    Poll::Ready(None)
                };
            }
            if self.next.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.frames -= 1;
            let every = self.every;
            self.next.as_mut().reset(Instant::now() + every);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }

    /// Reads the body `make` makes (on a runtime, as timers need) to its end: the bytes,
    /// or the error it ended with.
    fn drain(make: impl FnOnce() -> Body) -> Result<usize, BoxError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async move { Ok(make().collect().await?.to_bytes().len()) })
    }

    #[test]
    fn a_body_that_falls_silent_ends_stalled_after_the_gap() {
        let gap = Duration::from_millis(100);
        let began = std::time::Instant::now();
        let ended = drain(|| GapLimited::limit(Paced::new(2, gap / 4, true), gap));
        let error = ended.expect_err("a silent body must not wait for ever");
        assert!(error.downcast_ref::<Stalled>().is_some(), "{error}");
        assert!(began.elapsed() >= gap, "ended after {:?}", began.elapsed());
    }

    #[test]
    fn each_frame_gives_the_body_the_gap_again() {
        // Five frames 60 ms apart: 300 ms in all, each gap under 100 ms.
        let gap = Duration::from_millis(100);
        let every = Duration::from_millis(60);
        let body = || GapLimited::limit(Paced::new(5, every, false), gap);
        assert_eq!(drain(body).unwrap(), 5);
    }

    /// A response the client takes one part of, then nothing: after the limit the body
    /// and what it holds are dropped, and the next ask ends it with [`Untaken`].
    #[test]
    fn an_answer_the_client_stops_taking_is_dropped_with_what_it_holds() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let held = Arc::new(());
            let (told, heard) = std::sync::mpsc::channel();
            let limit = Duration::from_millis(100);
            let backend = Paced::new(10, Duration::ZERO, false);
            let backend = backend.map_err(|never| match never {}).boxed();
            let on_drop = move || told.send(()).unwrap();
            let mut body = must_be_taken(backend, held.clone(), limit, on_drop);
            assert!(body.frame().await.unwrap().is_ok(), "the first part");
            tokio::time::sleep(limit * 3).await;
            assert!(heard.try_recv().is_ok(), "dropped after the limit");
            assert_eq!(Arc::strong_count(&held), 1, "with what it held");
            let error = body.frame().await.unwrap().unwrap_err();
            assert!(error.downcast_ref::<Untaken>().is_some(), "{error}");
        });
    }

    /// A backend slow to send is not the client's stall: parts 150 ms apart under a limit
    /// of 100 ms all arrive, and what the body held goes once it ends.
    #[test]
    fn a_slow_backend_is_waited_for() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let held = Arc::new(());
            let limit = Duration::from_millis(100);
            let backend = Paced::new(3, Duration::from_millis(150), false);
            let backend = backend.map_err(|never| match never {}).boxed();
            let body = must_be_taken(backend, held.clone(), limit, || panic!("dropped"));
            assert_eq!(body.collect().await.unwrap().to_bytes().len(), 3);
            assert_eq!(Arc::strong_count(&held), 1, "let go at the end");
        });
    }
}
