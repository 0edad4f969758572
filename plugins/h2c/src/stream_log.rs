//! The hyper engine's access line for each stream (`http1://` routes), as the relay writes
//! one ([`crate::relay`]): the daemon's own line says only that an HTTP/2 connection
//! opened and ended, and an operator wants each request. Written through the daemon
//! (ABI 1.8, [`protocol_api::access`]) when the stream is over: its answer's body ended,
//! or the stream went before it did.
//!
//! `in` and `out` count the bodies' bytes (hyper does not say what the field blocks took
//! on the wire), `out` as hyper took them to send.

use crate::relay::stream::{cut, LOGGED_FIELD, LOGGED_TARGET};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use hyper::body::{Body, Frame};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// One stream's line, written when dropped; nothing while the access log is off.
#[derive(Default)]
pub struct StreamLog(Option<Box<Record>>);

struct Record {
    peer: String,
    method: Box<str>,
    target: Box<str>,
    /// `:authority` (or `host`), `origin`, `referer`, `user-agent`.
    named: [Option<Box<str>>; 4],
    began: Instant,
    status: Option<u16>,
    /// The client went before an answer (its request body failed): none is named.
    gone: bool,
    tally: Arc<Tally>,
}

/// What the bodies moved, counted as they go.
#[derive(Default)]
struct Tally {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// The answer's body came to its end.
    answered: AtomicBool,
    /// The answer's body failed (the backend's reset or error).
    failed: AtomicBool,
}

impl StreamLog {
    /// A stream's line, if the access log is on.
    pub fn begin(peer: SocketAddr, method: &Method, uri: &Uri, headers: &HeaderMap) -> StreamLog {
        if !protocol_api::access::enabled() {
            return StreamLog(None);
        }
        let field = |name: &str| {
            let value = headers.get(name)?;
            Some(cut(value.as_bytes(), LOGGED_FIELD))
        };
        let host = uri
            .authority()
            .map(|a| cut(a.as_str().as_bytes(), LOGGED_FIELD))
            .or_else(|| field("host"));
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        StreamLog(Some(Box::new(Record {
            peer: peer.to_string(),
            method: cut(method.as_str().as_bytes(), LOGGED_TARGET / 10),
            target: cut(target.as_bytes(), LOGGED_TARGET),
            named: [host, field("origin"), field("referer"), field("user-agent")],
            began: Instant::now(),
            status: None,
            gone: false,
            tally: Arc::default(),
        })))
    }

    /// The client reset the stream or closed its connection before any answer: the answer
    /// made after that reaches nobody, and the line names none (a review: a `400` the
    /// client never got).
    pub fn client_gone(&mut self) {
        if let Some(record) = self.0.as_deref_mut() {
            record.gone = true;
        }
    }

    /// The answer the stream got (its head went, or goes now).
    pub fn answered(&mut self, status: StatusCode) {
        if let Some(record) = self.0.as_deref_mut().filter(|record| !record.gone) {
            record.status = Some(status.as_u16());
        }
    }

    /// `body` (the request's), its bytes counted in.
    pub fn count_in<B>(&self, body: B) -> Counted<B> {
        Counted {
            body,
            tally: self.0.as_ref().map(|r| r.tally.clone()),
            out: false,
        }
    }

    /// `body` (the answer's), its bytes counted out, and its end noted.
    pub fn count_out<B>(&self, body: B) -> Counted<B> {
        Counted {
            body,
            tally: self.0.as_ref().map(|r| r.tally.clone()),
            out: true,
        }
    }
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        let Some(record) = self.0.take() else {
            return;
        };
        let tally = &record.tally;
        let reason = match (record.status, tally.answered.load(Relaxed)) {
            (_, true) => None,
            (None, false) => Some("ended before its answer (reset, or the connection closed)"),
            (Some(_), false) if tally.failed.load(Relaxed) => Some("the answer's body failed"),
            (Some(_), false) => {
                Some("ended before its answer did (reset, or the connection closed)")
            }
        };
        let [host, origin, referer, user_agent] = record.named.each_ref().map(Option::as_deref);
        protocol_api::access::write(&protocol_api::access::Exchange {
            peer: &record.peer,
            method: &record.method,
            target: &record.target,
            version: "HTTP/2.0",
            status: record.status,
            protocol: "h2c",
            bytes_in: tally.bytes_in.load(Relaxed),
            bytes_out: tally.bytes_out.load(Relaxed),
            elapsed: record.began.elapsed(),
            reason,
            tls: None, // hyper serves cleartext connections only
            named: protocol_api::access::Named {
                host,
                origin,
                referer,
                user_agent,
            },
        });
    }
}

/// A body whose data bytes a stream's line counts.
pub struct Counted<B> {
    body: B,
    tally: Option<Arc<Tally>>,
    /// The answer's (counted out, its end noted) rather than the request's.
    out: bool,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Some(tally) = &self.tally {
            let count = match self.out {
                true => &tally.bytes_out,
                false => &tally.bytes_in,
            };
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        count.fetch_add(data.len() as u64, Relaxed);
                    }
                }
                Poll::Ready(None) if self.out => tally.answered.store(true, Relaxed),
                Poll::Ready(Some(Err(_))) if self.out => tally.failed.store(true, Relaxed),
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.body.is_end_stream();
        if end && self.out {
            // hyper asks this before polling an empty answer (HEAD, 204): it is whole.
            if let Some(tally) = &self.tally {
                tally.answered.store(true, Relaxed);
            }
        }
        end
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[test]
    fn bodies_are_counted_and_the_answers_end_noted() {
        let tally = Arc::new(Tally::default());
        let log = StreamLog(Some(Box::new(Record {
            peer: "127.0.0.1:1".into(),
            method: "GET".into(),
            target: "/".into(),
            named: Default::default(),
            began: Instant::now(),
            status: None,
            gone: false,
            tally: tally.clone(),
        })));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let up = log.count_in(Full::new(Bytes::from_static(b"12345")));
            assert_eq!(up.collect().await.unwrap().to_bytes().len(), 5);
            assert!(
                !tally.answered.load(Relaxed),
                "a request's end is no answer"
            );
            let down = log.count_out(Full::new(Bytes::from_static(b"1234567")));
            down.collect().await.unwrap();
        });
        assert_eq!(tally.bytes_in.load(Relaxed), 5);
        assert_eq!(tally.bytes_out.load(Relaxed), 7);
        assert!(tally.answered.load(Relaxed));
        assert_eq!(
            &*cut("é".repeat(600).as_bytes(), LOGGED_FIELD),
            format!("{}...", "é".repeat(LOGGED_FIELD / 2))
        );
    }
}
