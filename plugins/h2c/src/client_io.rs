//! The client connection as the HTTP/2 server reads and writes it: bytes made up for the
//! server first (the preamble of an upgrade, or the preface the daemon already read), then
//! the socket; output through the [`AckFilter`] of an upgrade.
//!
//! End of input is held back until the connection's watcher says what it is ([`EofGate`]).
//! When the daemon stops it shuts the read side of every connection so that blocked reads
//! return; to HTTP/2 that would look like the client leaving, and the server would drop the
//! streams it is meant to finish. So a read of 0 is not passed on until the watcher (on the
//! thread that may ask the daemon) has looked: a client that left gets its end of stream;
//! while the daemon stops, reads are retried now and then instead, so that the client's
//! WINDOW_UPDATEs and the rest of its request bodies still arrive during the grace period.

use crate::upgrade::{AckFilter, PREFACE};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How often reads are retried after a read of 0 while the daemon stops.
const RETRY_WHILE_STOPPING: Duration = Duration::from_millis(50);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Eof {
    /// No end of input seen.
    #[default]
    None,
    /// A read returned 0; the watcher has not yet said why.
    Held,
    /// The client closed: pass the end of stream on.
    Client,
    /// The daemon is stopping: retry reads now and then.
    Stopping,
}

/// Where the reader and the connection's watcher meet about an end of input.
#[derive(Default)]
pub struct EofGate {
    state: Mutex<(Eof, Option<Waker>)>,
    /// Wakes the watcher when a read of 0 waits for its verdict.
    held: tokio::sync::Notify,
}

impl EofGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Eof, Option<Waker>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves when a read of 0 may be waiting for a verdict.
    pub async fn held(&self) {
        self.held.notified().await
    }

    /// True when a read of 0 waits for a verdict.
    pub fn is_held(&self) -> bool {
        self.lock().0 == Eof::Held
    }

    /// The read of 0 was the client's: pass it on.
    pub fn client_closed(&self) {
        self.decide(Eof::Client);
    }

    /// The daemon is stopping: reads of 0 are its doing.
    pub fn stopping(&self) {
        self.decide(Eof::Stopping);
    }

    fn decide(&self, verdict: Eof) {
        let mut state = self.lock();
        state.0 = verdict;
        if let Some(waker) = state.1.take() {
            waker.wake();
        }
    }

    /// After a read of 0: what the reader does now.
    fn on_eof(&self, waker: &Waker) -> Eof {
        let mut state = self.lock();
        if state.0 == Eof::None {
            state.0 = Eof::Held;
            self.held.notify_one();
        }
        if state.0 == Eof::Held {
            state.1 = Some(waker.clone());
        }
        state.0
    }
}

pub struct ClientIo {
    /// Made up for the server, read before anything of the client's.
    prefix: Vec<u8>,
    prefix_at: usize,
    /// The client's bytes the daemon read ahead, before the socket's.
    early: Vec<u8>,
    early_at: usize,
    /// Bytes of the client's own preface still to check and drop (after an upgrade, the
    /// server was given a preface in `prefix` already).
    preface_left: usize,
    stream: TcpStream,
    filter: Option<AckFilter>,
    /// Filtered output not yet written.
    pending: Vec<u8>,
    pending_at: usize,
    gate: Arc<EofGate>,
    retry: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Copies from `from[*at..]` into `buf`; true if anything was there.
fn serve_from(from: &mut Vec<u8>, at: &mut usize, buf: &mut ReadBuf<'_>) -> bool {
    if *at >= from.len() {
        return false;
    }
    let n = buf.remaining().min(from.len() - *at);
    buf.put_slice(&from[*at..*at + n]);
    *at += n;
    if *at == from.len() {
        *from = Vec::new();
        *at = 0;
    }
    true
}

impl ClientIo {
    /// `prefix` is read first, then `early`, then the socket. With `strip_preface` the
    /// client's first 24 bytes must be the HTTP/2 preface, and are dropped. `filter` drops
    /// the upgrade's implicit SETTINGS ACK.
    pub fn new(
        prefix: Vec<u8>,
        early: Vec<u8>,
        strip_preface: bool,
        stream: TcpStream,
        filter: Option<AckFilter>,
        gate: Arc<EofGate>,
    ) -> ClientIo {
        ClientIo {
            prefix,
            prefix_at: 0,
            early,
            early_at: 0,
            preface_left: if strip_preface { PREFACE.len() } else { 0 },
            stream,
            filter,
            pending: Vec::new(),
            pending_at: 0,
            gate,
            retry: None,
        }
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending_at < self.pending.len() {
            let n = ready!(
                Pin::new(&mut self.stream).poll_write(cx, &self.pending[self.pending_at..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending_at += n;
        }
        self.pending = Vec::new();
        self.pending_at = 0;
        Poll::Ready(Ok(()))
    }

    /// The client's bytes: read ahead, then the socket (see [`EofGate`] for its end).
    fn poll_client(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if serve_from(&mut self.early, &mut self.early_at, buf) {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(retry) = &mut self.retry {
                ready!(retry.as_mut().poll(cx));
                self.retry = None;
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
            if buf.filled().len() > before || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match self.gate.on_eof(cx.waker()) {
                Eof::Client => return Poll::Ready(Ok(())),
                Eof::Stopping => {
                    self.retry = Some(Box::pin(tokio::time::sleep(RETRY_WHILE_STOPPING)));
                }
                Eof::None | Eof::Held => return Poll::Pending,
            }
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if serve_from(&mut this.prefix, &mut this.prefix_at, buf) {
            return Poll::Ready(Ok(()));
        }
        while this.preface_left > 0 {
            let mut space = [0u8; PREFACE.len()];
            let mut part = ReadBuf::new(&mut space[..this.preface_left]);
            ready!(this.poll_client(cx, &mut part))?;
            let got = part.filled();
            if got.is_empty() {
                return Poll::Ready(Ok(())); // the client left before its preface
            }
            let at = PREFACE.len() - this.preface_left;
            if got != &PREFACE[at..at + got.len()] {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the client did not send the HTTP/2 preface after the 101",
                )));
            }
            this.preface_left -= got.len();
        }
        this.poll_client(cx, buf)
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        match &mut this.filter {
            Some(filter) if !filter.is_done() => {
                filter.filter(buf, &mut this.pending);
                // Start writing at once; what does not go now goes on the next call or flush.
                if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(buf.len()))
            }
            _ => Pin::new(&mut this.stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}
