//! Bodies that must keep moving between a client and an HTTP/1.1 backend, whose connection
//! each stream holds (a descriptor, and a slot of `SWITCHYARD_H2C_HTTP1_MAX`). Both bodies
//! hold the stream's slot until they are done: hyper goes on sending a request body after
//! the answer ended, on the same backend connection.
//!
//! - A request body that sends nothing for a while as the backend waits for it ends with
//!   [`Stalled`], and hyper then drops the backend request (and its connection) and the
//!   stream ([`GapLimited`]). The clock runs only while the body is asked for: a backend
//!   that does not read the body (its socket is full) is not the client's silence.
//! - Once the answer is complete (or gone), the rest of the request is not sent: the body
//!   ends with [`Answered`], which closes the backend connection, as the relay resets such
//!   a stream with NO_ERROR (RFC 9113 §8.1). Ending it as if whole would pass a truncated
//!   chunked upload off as complete.
//! - A response body the client takes nothing of for as long (it grants no window, or
//!   does not read its socket) is dropped with what it holds ([`must_be_taken`]), and the
//!   stream ends when the client next makes room. The clock runs only after a part was
//!   handed on and until the next is asked for: a backend that is slow to send (a long
//!   poll, a stream of events) is not the client's doing.

use crate::proxy::{Body, BoxError};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
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

/// The error a request body ends with once its answer is complete.
#[derive(Debug)]
pub struct Answered;

impl std::fmt::Display for Answered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the answer ended before the request")
    }
}

impl std::error::Error for Answered {}

pub struct GapLimited<B, H> {
    inner: B,
    gap: Duration,
    /// When the body runs out of time if nothing comes: set when it is asked for and has
    /// nothing, kept while it goes on having nothing.
    deadline: Pin<Box<Sleep>>,
    /// The last ask found nothing: the clock runs.
    waiting: bool,
    /// Says (or, dropped, closes) when the answer is over.
    answered: Option<oneshot::Receiver<()>>,
    /// What the body holds until it ends.
    held: Option<H>,
}

impl<B, H> GapLimited<B, H>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
    H: Send + Sync + Unpin + 'static,
{
    /// `inner`, which must send something at least every `gap` from now on, and stops at
    /// `answered`; `held` goes when it ends.
    pub fn limit(inner: B, gap: Duration, answered: oneshot::Receiver<()>, held: H) -> Body {
        GapLimited {
            inner,
            gap,
            deadline: Box::pin(tokio::time::sleep(gap)),
            waiting: false,
            answered: Some(answered),
            held: Some(held),
        }
        .boxed()
    }
}

impl<B, H> GapLimited<B, H> {
    /// The body is over: what it held goes now, not when hyper lets it go.
    fn over(&mut self, error: Option<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.held = None;
        self.answered = None;
        Poll::Ready(error.map(Err))
    }
}

impl<B, H> hyper::body::Body for GapLimited<B, H>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    H: Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(answered) = this.answered.as_mut() {
            if Pin::new(answered).poll(cx).is_ready() {
                return this.over(Some(Box::new(Answered)));
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.over(Some(e.into())),
            Poll::Ready(None) => this.over(None),
            Poll::Pending => {
                if !this.waiting {
                    // Asked for, and nothing: the clock starts now.
                    this.waiting = true;
                    this.deadline.as_mut().reset(Instant::now() + this.gap);
                }
                match this.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => this.over(Some(Box::new(Stalled(this.gap)))),
                    Poll::Pending => Poll::Pending,
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

/// A response body the client took nothing of in time: the backend connection is gone.
#[derive(Debug)]
pub struct Untaken(pub Duration);

impl std::fmt::Display for Untaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client took nothing of the answer for {:?}", self.0)
    }
}

impl std::error::Error for Untaken {}

/// A response body, with what it holds and the sender that says it is over (by being
/// dropped with it), until the client takes it or stops taking it.
struct Taking<T> {
    /// `None` once ended, or dropped for the client's stall.
    body: Option<(Body, T, oneshot::Sender<()>)>,
    /// When the last part was handed on, while the next has not been asked for.
    handed_at: Option<Instant>,
}

/// `body`, which must be taken part by part with no wait of `limit` or more for the
/// client; past that, `body` and `held` are dropped (by a task on the runtime: a body the
/// client does not take is not polled) and `on_drop` is called. `answered` is dropped
/// when the body is over, whichever way, and its receiver told so.
pub fn must_be_taken<T: Send + 'static>(
    body: Body,
    held: T,
    limit: Duration,
    answered: oneshot::Sender<()>,
    on_drop: impl FnOnce() + Send + 'static,
) -> Body {
    // An answer with no body (HEAD, 204, 304) is sent whole at once: nothing to watch.
    let empty = body.is_end_stream();
    let taking = Arc::new(Mutex::new(Taking {
        body: Some((body, held, answered)),
        handed_at: None,
    }));
    let watchdog = (!empty)
        .then(|| tokio::spawn(watch(Arc::downgrade(&taking), limit, on_drop)).abort_handle());
    MustBeTaken {
        taking,
        limit,
        watchdog,
    }
    .boxed()
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
    /// The task that watches for the client's stall, ended with the body.
    watchdog: Option<AbortHandle>,
}

impl<T> MustBeTaken<T> {
    /// The body is over: the watch too.
    fn over(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
    }
}

impl<T> Drop for MustBeTaken<T> {
    fn drop(&mut self) {
        self.over();
    }
}

impl<T> hyper::body::Body for MustBeTaken<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut taking = this.taking.lock().unwrap_or_else(|e| e.into_inner());
        let Some((body, ..)) = taking.body.as_mut() else {
            drop(taking);
            this.over();
            return Poll::Ready(Some(Err(Box::new(Untaken(this.limit)))));
        };
        let polled = Pin::new(body).poll_frame(cx);
        taking.handed_at = match &polled {
            Poll::Ready(Some(Ok(_))) => Some(Instant::now()),
            _ => None,
        };
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            // Ended: what it held goes now, not when hyper lets the body go.
            taking.body = None;
            drop(taking);
            this.over();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let taking = self.taking.lock().unwrap_or_else(|e| e.into_inner());
        taking
            .body
            .as_ref()
            .is_some_and(|(body, ..)| body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let taking = self.taking.lock().unwrap_or_else(|e| e.into_inner());
        taking
            .body
            .as_ref()
            .map_or_else(SizeHint::default, |(body, ..)| body.size_hint())
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

    /// Runs `test` on a runtime with timers, as the bodies need.
    fn block_on<T>(test: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(test)
    }

    /// Reads the body `make` makes (on a runtime, as timers need) to its end: the bytes,
    /// or the error it ended with.
    fn drain(make: impl FnOnce() -> Body) -> Result<usize, BoxError> {
        block_on(async move { Ok(make().collect().await?.to_bytes().len()) })
    }

    #[test]
    fn a_body_that_falls_silent_ends_stalled_after_the_gap() {
        let gap = Duration::from_millis(100);
        let began = std::time::Instant::now();
        let (_answered, over) = oneshot::channel();
        let ended = drain(|| GapLimited::limit(Paced::new(2, gap / 4, true), gap, over, ()));
        let error = ended.expect_err("a silent body must not wait for ever");
        assert!(error.downcast_ref::<Stalled>().is_some(), "{error}");
        assert!(began.elapsed() >= gap, "ended after {:?}", began.elapsed());
    }

    #[test]
    fn each_frame_gives_the_body_the_gap_again() {
        // Five frames 60 ms apart: 300 ms in all, each gap under 100 ms.
        let gap = Duration::from_millis(100);
        let every = Duration::from_millis(60);
        let (_answered, over) = oneshot::channel();
        let body = || GapLimited::limit(Paced::new(5, every, false), gap, over, ());
        assert_eq!(drain(body).unwrap(), 5);
    }

    /// A client's body fed by hand.
    struct Fed(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

    impl hyper::body::Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|part| part.map(|p| Ok(Frame::data(p))))
        }
    }

    /// The clock runs only while the body is asked for: a backend that asked for nothing
    /// for longer than the gap (its socket full) does not make the client's next part,
    /// coming soon after the backend asks again, late.
    #[test]
    fn time_the_backend_did_not_ask_is_not_counted() {
        block_on(async {
            let gap = Duration::from_millis(100);
            let (client, fed) = tokio::sync::mpsc::unbounded_channel();
            let (_answered, over) = oneshot::channel();
            let mut body = GapLimited::limit(Fed(fed), gap, over, ());
            client.send(Bytes::from_static(b"a")).unwrap();
            assert!(body.frame().await.unwrap().is_ok());
            tokio::time::sleep(gap * 3).await;
            tokio::spawn(async move {
                tokio::time::sleep(gap / 2).await;
                client.send(Bytes::from_static(b"b")).unwrap();
            });
            let next = body.frame().await.unwrap();
            assert!(
                next.is_ok(),
                "cut for the backend's pause: {:?}",
                next.err()
            );
        });
    }

    /// A response the client takes one part of, then nothing: after the limit the body
    /// and what it holds are dropped, and the next ask ends it with [`Untaken`].
    #[test]
    fn an_answer_the_client_stops_taking_is_dropped_with_what_it_holds() {
        block_on(async {
            let held = Arc::new(());
            let (told, heard) = std::sync::mpsc::channel();
            let limit = Duration::from_millis(100);
            let backend = Paced::new(10, Duration::ZERO, false);
            let backend = backend.map_err(|never| match never {}).boxed();
            let on_drop = move || told.send(()).unwrap();
            let (answered, over) = oneshot::channel();
            let mut body = must_be_taken(backend, held.clone(), limit, answered, on_drop);
            assert!(body.frame().await.unwrap().is_ok(), "the first part");
            tokio::time::sleep(limit * 3).await;
            assert!(heard.try_recv().is_ok(), "dropped after the limit");
            assert_eq!(Arc::strong_count(&held), 1, "with what it held");
            let error = body.frame().await.unwrap().unwrap_err();
            assert!(error.downcast_ref::<Untaken>().is_some(), "{error}");
            let told = tokio::time::timeout(Duration::from_millis(100), over).await;
            assert!(told.is_ok(), "the request is told the answer is over");
        });
    }

    /// A backend slow to send is not the client's stall: parts 150 ms apart under a limit
    /// of 100 ms all arrive, and what the body held goes once it ends.
    #[test]
    fn a_slow_backend_is_waited_for() {
        block_on(async {
            let held = Arc::new(());
            let limit = Duration::from_millis(100);
            let backend = Paced::new(3, Duration::from_millis(150), false);
            let backend = backend.map_err(|never| match never {}).boxed();
            let (answered, over) = oneshot::channel();
            let body = must_be_taken(backend, held.clone(), limit, answered, || panic!("dropped"));
            assert_eq!(body.collect().await.unwrap().to_bytes().len(), 3);
            assert_eq!(Arc::strong_count(&held), 1, "let go at the end");
            let told = tokio::time::timeout(Duration::from_millis(100), over).await;
            assert!(told.is_ok(), "the request is told the answer is over");
        });
    }

    /// The answer's end stops the rest of the request body, and lets go of what the body
    /// held: hyper would go on sending it on the backend connection the stream no longer
    /// counts (an attacker's review kept 983 backend connections so, at 1,024 descriptors).
    #[test]
    fn a_request_body_stops_when_the_answer_is_over() {
        block_on(async {
            let held = Arc::new(());
            let (answered, over) = oneshot::channel();
            let every = Duration::from_millis(20);
            let upload = Paced::new(1_000, every, false);
            let mut body = GapLimited::limit(upload, Duration::from_secs(5), over, held.clone());
            assert!(body.frame().await.unwrap().is_ok(), "a part of the upload");
            let answer = Paced::new(1, Duration::ZERO, false);
            let answer = answer.map_err(|never| match never {}).boxed();
            let watched = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            let answer = must_be_taken(
                answer,
                held.clone(),
                Duration::from_secs(5),
                answered,
                || {},
            );
            let metrics = tokio::runtime::Handle::current().metrics();
            assert_eq!(metrics.num_alive_tasks(), watched + 1, "a watchdog");
            assert_eq!(answer.collect().await.unwrap().to_bytes().len(), 1);
            tokio::task::yield_now().await;
            let alive = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            assert_eq!(alive, watched, "the watchdog ends with the answer");
            let error = body.frame().await.unwrap().unwrap_err();
            assert!(error.downcast_ref::<Answered>().is_some(), "{error}");
            assert_eq!(Arc::strong_count(&held), 1, "both let go");
        });
    }

    /// An answer with no body (HEAD, 204, 304) needs no watchdog.
    #[test]
    fn an_empty_answer_spawns_nothing() {
        block_on(async {
            let empty = http_body_util::Empty::<Bytes>::new();
            let empty = empty.map_err(|never| match never {}).boxed();
            let (answered, _over) = oneshot::channel();
            let body = must_be_taken(empty, (), Duration::from_secs(5), answered, || {});
            let alive = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            assert_eq!(alive, 0);
            drop(body);
        });
    }
}
