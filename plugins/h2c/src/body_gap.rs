//! A request body that must keep coming: one that sends nothing for a while while the
//! backend waits for it ends with [`Stalled`], and hyper then drops the backend request
//! (and the backend connection it held) and the stream.
//!
//! The clock runs only while the body is asked for: a backend that does not read the body
//! (its socket is full) is not the client's silence.

use crate::proxy::{Body, BoxError};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
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
}
