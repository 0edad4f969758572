//! The start of a request body, read before its stream takes an HTTP/1.1 backend
//! connection.
//!
//! Each stream at an HTTP/1.1 backend holds a backend connection and a slot of
//! `SWITCHYARD_H2C_HTTP1_MAX` for as long as its request body keeps moving. A body that
//! sent a few bytes every `SWITCHYARD_H2C_BODY_TIMEOUT_MS` held them for ever at the cost
//! of nothing: four addresses held all 2,500. So a request body is read first, up to
//! `SWITCHYARD_H2C_HTTP1_REQUEST_BUFFER` (64 KiB), into the daemon's memory, and only then
//! does the stream take a backend connection: a small body (most of them: forms, JSON)
//! goes whole, and a slot costs a client at least that many bytes, sent within the body
//! time-out between any two. nginx reads whole bodies first (`proxy_request_buffering`,
//! to disk past 16 KiB); HAProxy waits for a buffer's worth (`option
//! http-buffer-request`). A body larger than that takes its slot with its first 64 KiB
//! and streams the rest: a slot then costs its client 64 KiB sent, not nothing.
//!
//! What is read is copied into one buffer (the frames' own `Bytes` would keep the reader's
//! buffers they were cut from, and a frame's overhead each), which grows with what comes,
//! doubling, to the body's size (its `content-length`) or the limit and no further. A
//! connection reads at most `SWITCHYARD_H2C_HTTP1_PER_CONNECTION` bodies at once (its
//! permits), and all of them together hold at most [`Budget`]'s bytes, counted as the
//! buffers grow: past it a body goes on unread, as with the limit at 0. So bodies trickling
//! in on many connections cost the daemon no more than that, and filling it costs a client
//! as many bytes sent.

use crate::body_gap::Stalled;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use protocol_api::metrics::Gauge;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// What request bodies read before they go on may hold, all connections together.
pub struct Budget {
    held: AtomicUsize,
    max: usize,
    /// Bytes held now (`switchyard_h2c_http1_buffered_bytes`).
    gauge: Gauge,
}

impl Budget {
    pub fn new(max: usize, gauge: Gauge) -> Arc<Budget> {
        Arc::new(Budget {
            held: AtomicUsize::new(0),
            max,
            gauge,
        })
    }

    /// None of the budget yet: a body's share grows with what it holds.
    fn share(self: &Arc<Self>) -> Reserved {
        Reserved {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

/// Bytes of the [`Budget`] a body holds, given back when dropped.
struct Reserved {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Reserved {
    /// `more` bytes of the budget, or `false` (and nothing taken) when they would take it
    /// past its end.
    fn grow(&mut self, more: usize) -> bool {
        let budget = &self.budget;
        let mut held = budget.held.load(Ordering::Relaxed);
        loop {
            let Some(after) = held.checked_add(more).filter(|&after| after <= budget.max) else {
                return false;
            };
            match (budget.held).compare_exchange_weak(
                held,
                after,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => held = now,
            }
        }
        budget.gauge.add(more as i64);
        self.bytes += more;
        true
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.gauge.add(-(self.bytes as i64));
    }
}

/// Why the start of a body could not be read.
#[derive(Debug)]
pub enum NotRead<E> {
    /// Nothing came for the body time-out: answer `408`, no backend was taken.
    Stalled(Stalled),
    /// The body failed (the client reset its stream).
    Failed(E),
}

/// A request body whose start was read: that start, then the rest as it comes.
pub struct Prefixed<B> {
    /// Read and not yet handed on.
    start: Option<Bytes>,
    /// The part of the last frame read that was past the buffer's end.
    tail: Option<Bytes>,
    /// The body's trailers, when they came while its start was read.
    trailers: Option<HeaderMap>,
    /// The rest of the body; `None` once it was read to its end.
    rest: Option<B>,
    /// The budget the start holds until it is handed on.
    reserved: Option<Reserved>,
}

impl<B: Body<Data = Bytes> + Unpin> Prefixed<B> {
    /// Reads `body` until its end, or until `limit` bytes of it are in (a frame that goes
    /// past it is kept apart, as it came); more than `gap` between two frames is
    /// [`NotRead::Stalled`]. `limit` 0 reads nothing; no room left in `budget` when the
    /// first bytes come reads no more than them.
    pub async fn read(
        mut body: B,
        limit: usize,
        gap: Duration,
        budget: &Arc<Budget>,
    ) -> Result<Self, NotRead<B::Error>> {
        let mut ended = body.is_end_stream();
        // A declared length bounds the buffer; h2 refuses a body that overruns it.
        let most = body.size_hint().upper().map_or(limit, |declared| {
            usize::try_from(declared).map_or(limit, |declared| declared.min(limit))
        });
        // The buffer, and its share of the budget, grow with the bytes that come: a stream
        // that sends none (HEADERS alone, for the body time-out) holds neither, and one
        // that sends a byte of a declared 64 KiB holds a byte.
        let mut reserved = budget.share();
        let mut start = Vec::new();
        let (mut tail, mut trailers) = (None, None);
        while !ended && start.len() < most {
            let frame = match tokio::time::timeout(gap, body.frame()).await {
                Err(_) => return Err(NotRead::Stalled(Stalled(gap))),
                Ok(None) => {
                    ended = true;
                    break;
                }
                Ok(Some(Err(e))) => return Err(NotRead::Failed(e)),
                Ok(Some(Ok(frame))) => frame,
            };
            ended = body.is_end_stream();
            match frame.into_data() {
                Ok(data) => {
                    let taken = data.len().min(most - start.len());
                    if !make_room(&mut start, &mut reserved, taken, most) {
                        // No room left in the budget: this frame goes on as it came, the
                        // rest unread.
                        tail = Some(data);
                        break;
                    }
                    start.extend_from_slice(&data[..taken]);
                    tail = (taken < data.len()).then(|| data.slice(taken..));
                }
                Err(frame) => {
                    // Trailers end a body (RFC 9113 §8.1); no other frame kind exists.
                    trailers = frame.into_trailers().ok();
                    ended = true;
                }
            }
        }
        let reserved = (reserved.bytes > 0).then_some(reserved);
        Ok(Prefixed {
            start: (!start.is_empty()).then(|| Bytes::from(start)),
            tail,
            trailers,
            rest: (!ended).then_some(body),
            reserved,
        })
    }

    /// Whether the whole body was read.
    pub fn is_whole(&self) -> bool {
        self.rest.is_none()
    }

    /// Bytes read and not handed on yet.
    pub fn read_len(&self) -> usize {
        [&self.start, &self.tail]
            .iter()
            .filter_map(|part| part.as_ref())
            .map(Bytes::len)
            .sum()
    }
}

/// Makes room in `start` for `more` bytes (of at most `most` in all), with the budget's
/// leave: it at least doubles (a body of many small frames is copied a few times, not
/// once a frame), but never past `most`, and when doubling is past the budget it takes
/// what is needed alone. `false`: not even that.
fn make_room(start: &mut Vec<u8>, reserved: &mut Reserved, more: usize, most: usize) -> bool {
    let (needed, capacity) = (start.len() + more, reserved.bytes);
    if needed <= capacity {
        return true;
    }
    let doubled = capacity.saturating_mul(2).clamp(needed, most.max(needed));
    for size in [doubled, needed] {
        if reserved.grow(size - capacity) {
            start.reserve_exact(size - start.len());
            return true;
        }
    }
    false
}

impl<B: Body<Data = Bytes> + Unpin> Body for Prefixed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if let Some(start) = this.start.take() {
            // Handed on: what it holds is hyper's to write now, and soon gone.
            this.reserved = None;
            return Poll::Ready(Some(Ok(Frame::data(start))));
        }
        if let Some(tail) = this.tail.take() {
            return Poll::Ready(Some(Ok(Frame::data(tail))));
        }
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        match this.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.start.is_none()
            && self.tail.is_none()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    /// What is read, and what the rest says of itself: hyper frames a body of known size
    /// with `Content-Length`, not chunks; one with trailers needs chunks to carry them.
    fn size_hint(&self) -> SizeHint {
        let read = self.read_len() as u64;
        let Some(rest) = &self.rest else {
            return match self.trailers {
                None => SizeHint::with_exact(read),
                Some(_) => {
                    let mut hint = SizeHint::new();
                    hint.set_lower(read);
                    hint
                }
            };
        };
        let rest = rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(read));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(read));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::future::Future;

    /// A body that hands out its frames in order, each as its own frame; `None` is a
    /// frame that never comes.
    struct Frames(VecDeque<Option<Frame<Bytes>>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.0.pop_front() {
                Some(Some(frame)) => Poll::Ready(Some(Ok(frame))),
                Some(None) => {
                    self.0.push_front(None);
                    Poll::Pending
                }
                None => Poll::Ready(None),
            }
        }
    }

    fn data(bytes: &'static [u8]) -> Option<Frame<Bytes>> {
        Some(Frame::data(Bytes::from_static(bytes)))
    }

    fn run<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(future)
    }

    const GAP: Duration = Duration::from_millis(100);

    fn budget(max: usize) -> Arc<Budget> {
        let gauge = protocol_api::metrics::gauge("test_buffered", "In the plugin only.", &[]);
        Budget::new(max, gauge.unwrap().with(&[]))
    }

    #[test]
    fn a_small_body_is_read_whole_with_its_trailers_and_handed_on_as_one_frame() {
        run(async {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-sum", "7".parse().unwrap());
            let frames = [data(b"ab"), data(b"cd"), Some(Frame::trailers(trailers))];
            let body = Prefixed::read(Frames(frames.into()), 1024, GAP, &budget(1 << 20))
                .await
                .unwrap();
            assert!(body.is_whole());
            assert_eq!(body.size_hint().exact(), None, "chunks carry trailers");
            let collected = body.collect().await.unwrap();
            assert_eq!(collected.trailers().unwrap()["x-sum"], "7");
            assert_eq!(collected.to_bytes(), "abcd");
        });
    }

    #[test]
    fn a_large_body_is_read_to_the_limit_and_the_rest_follows_in_order() {
        run(async {
            let frames = [data(b"0123"), data(b"4567"), data(b"89")];
            let body = Prefixed::read(Frames(frames.into()), 5, GAP, &budget(1 << 20))
                .await
                .unwrap();
            assert!(!body.is_whole(), "10 bytes past a limit of 5");
            assert_eq!(body.read_len(), 8, "read a frame at a time");
            assert_eq!(body.collect().await.unwrap().to_bytes(), "0123456789");
        });
    }

    #[test]
    fn a_body_that_stops_within_its_start_is_stalled_and_no_limit_reads_nothing() {
        run(async {
            let frames = || Frames([data(b"a few bytes"), None].into());
            let read = Prefixed::read(frames(), 1024, GAP, &budget(1 << 20)).await;
            assert!(matches!(read, Err(NotRead::Stalled(Stalled(GAP)))));
            let body = Prefixed::read(frames(), 0, GAP, &budget(1 << 20))
                .await
                .unwrap();
            assert_eq!((body.is_whole(), body.read_len()), (false, 0));
        });
    }

    #[test]
    fn the_budget_is_held_until_the_start_is_handed_on_and_past_it_nothing_is_read() {
        run(async {
            let budget = budget(8);
            let frames = || Frames([data(b"0123"), data(b"4567"), data(b"89")].into());
            let mut first = Prefixed::read(frames(), 6, GAP, &budget).await.unwrap();
            assert_eq!(
                (budget.held.load(Ordering::Relaxed), first.read_len()),
                (6, 8)
            );
            let mut waiting = Box::pin(Prefixed::read(Frames([None].into()), 2, GAP, &budget));
            std::future::poll_fn(|cx| {
                assert!(waiting.as_mut().poll(cx).is_pending());
                Poll::Ready(())
            })
            .await;
            assert_eq!(
                budget.held.load(Ordering::Relaxed),
                6,
                "a stream that sent nothing holds none of the budget"
            );
            drop(waiting);
            let second = Prefixed::read(frames(), 6, GAP, &budget).await.unwrap();
            assert_eq!(
                second.read_len(),
                4,
                "6 more would be past the budget of 8: its first frame alone"
            );
            assert_eq!(second.collect().await.unwrap().to_bytes(), "0123456789");
            let handed = std::future::poll_fn(|cx| Pin::new(&mut first).poll_frame(cx)).await;
            assert_eq!(handed.unwrap().unwrap().into_data().unwrap(), "012345");
            assert_eq!(budget.held.load(Ordering::Relaxed), 0, "given back");
            assert_eq!(first.collect().await.unwrap().to_bytes(), "6789");
        });
    }

    /// [`Frames`] with a declared length (`content-length`).
    struct Declared(Frames, u64);

    impl Body for Declared {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Pin::new(&mut self.0).poll_frame(cx)
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.1)
        }
    }

    /// From a reading of the buffer: a body's first byte took the budget for all of its
    /// declared length (or the limit), so a thousand streams each sending a byte held the
    /// 64 MiB. A body holds what came now, and its buffer grows by doubling to its
    /// declared length and no further.
    #[test]
    fn a_body_holds_of_the_budget_what_came_and_never_more_than_its_length() {
        run(async {
            let budget = budget(1 << 20);
            let one_byte = Declared(Frames([data(b"a"), None].into()), 65_536);
            let gap = Duration::from_secs(60);
            let mut waiting = Box::pin(Prefixed::read(one_byte, 65_536, gap, &budget));
            std::future::poll_fn(|cx| {
                assert!(waiting.as_mut().poll(cx).is_pending());
                Poll::Ready(())
            })
            .await;
            assert_eq!(budget.held.load(Ordering::Relaxed), 1, "one byte came");
            drop(waiting);
            assert_eq!(budget.held.load(Ordering::Relaxed), 0);
            let frames = (0..5).map(|i| Some(Frame::data(Bytes::from(vec![i; 3_000]))));
            let odd = Declared(Frames(frames.collect()), 15_000);
            let body = Prefixed::read(odd, 65_536, GAP, &budget).await.unwrap();
            assert_eq!(
                budget.held.load(Ordering::Relaxed),
                15_000,
                "3,000, 6,000, 12,000, then the declared 15,000"
            );
            assert_eq!(body.read_len(), 15_000);
            let read = body.collect().await.unwrap().to_bytes();
            let sent: Vec<u8> = (0..5).flat_map(|i| [i; 3_000]).collect();
            assert_eq!(read, sent);
        });
    }

    #[test]
    fn an_empty_body_is_whole_at_once() {
        run(async {
            let body = Prefixed::read(Frames(VecDeque::new()), 1024, GAP, &budget(1 << 20))
                .await
                .unwrap();
            assert!(body.is_whole() && body.is_end_stream());
            assert_eq!(body.size_hint().exact(), Some(0));
            let body = Prefixed::read(Frames([data(b"abc")].into()), 1024, GAP, &budget(1 << 20))
                .await
                .unwrap();
            assert_eq!(
                body.size_hint().exact(),
                Some(3),
                "Content-Length, not chunks"
            );
        });
    }
}
