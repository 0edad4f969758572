//! The byte stream under a connection: what the HTTP/1.1 connection reads requests from and
//! writes answers to. A TCP socket, with or without a TLS session over it ([`Wire`]); unit
//! tests script one byte by byte.

use crate::tls::layer::{Mode, TlsLayer};
use std::io::{self, Read, Write};
use std::net::Shutdown;

/// A non-blocking, ordered byte stream in both directions: reads and writes return
/// `WouldBlock` when they cannot go on, and a read of 0 is the peer's end. A write that
/// takes less than offered means the stream is full until its next writable event, and a
/// read that returns less than asked means it is drained until its next readable event:
/// the connection stops there rather than spend a call on `WouldBlock`. (A TLS stream
/// keeps that promise about the socket under it.)
pub trait Transport: Read + Write {
    /// Ends our direction (after the last answer), keeping the other open to drain.
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// Writes out what the stream itself still holds (TLS records the socket did not
    /// take); true when nothing is left. Called on every writable event.
    fn flush_pending(&mut self) -> io::Result<bool> {
        Ok(true)
    }

    /// What the stream itself holds for the peer (TLS records the socket did not take):
    /// the connection's answers are not all out, nor may it close, while it does.
    fn has_pending(&self) -> bool {
        false
    }

    /// The TLS session over the socket, once bytes go through it.
    fn tls(&self) -> Option<&TlsLayer> {
        None
    }

    /// The stream has not yet carried a byte of the client's (a TLS handshake under way).
    fn is_handshaking(&self) -> bool {
        self.tls().is_some_and(|tls| tls.is_handshaking())
    }

    /// Sends up to `count` bytes of `file` from `offset`, as [`Write::write`] does bytes:
    /// less than `count` only when the stream is full (or the file ended). By default
    /// through `scratch` (reads, then writes); a plain socket has the kernel copy
    /// (`sendfile`).
    fn send_file(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        count: usize,
        scratch: &mut [u8],
    ) -> io::Result<usize> {
        copy_file(self, file, offset, count, scratch)
    }

    /// A TLS session waits for a PROXY protocol header before it begins.
    fn tls_waits(&self) -> bool {
        false
    }

    /// Has what the kernel still holds for the peer dropped with a reset when the
    /// connection closes ([`crate::sys::reset_if_unsent`]); true if it did.
    fn reset_if_unsent(&self) -> bool {
        false
    }

    /// The low 32 bits of what the peer has acknowledged, as the kernel counts it (`None`
    /// where it cannot say): a mark that moves when the peer takes data.
    fn acked(&self) -> Option<u32> {
        None
    }

    /// Bytes written that the kernel has not sent yet because the peer's window is (all
    /// but) shut; `None` where it cannot say.
    fn unsent(&self) -> Option<usize> {
        None
    }

    /// Has the socket reported writable only while fewer than `bytes` wait unsent in the
    /// kernel (`TCP_NOTSENT_LOWAT`), or, with `None`, as the system has it again;
    /// true when it is writable now (no writable event will come for it then).
    fn report_writable_below(&mut self, _bytes: Option<u32>) -> bool {
        true
    }

    /// A PROXY protocol header was read from the socket's first bytes, and `rest` with it:
    /// what follows belongs to the stream (a TLS session begins here and takes `rest` as
    /// its first ciphertext, leaving it empty; a plain socket leaves it as it is).
    fn proxy_header_read(&mut self, _rest: &mut Vec<u8>) -> io::Result<()> {
        Ok(())
    }
}

/// A stream as the kernel's share of a connection's output asks it
/// ([`protocol_api::kernel_share`]).
pub struct KernelOf<'a, T: ?Sized>(pub &'a mut T);

impl<T: Transport + ?Sized> protocol_api::kernel_share::KernelQueue for KernelOf<'_, T> {
    fn unsent(&self) -> Option<usize> {
        self.0.unsent()
    }

    fn report_writable_below(&mut self, bytes: Option<u32>) -> bool {
        self.0.report_writable_below(bytes)
    }
}

/// Sends `count` bytes of `file` from `offset` through `to` in `scratch`-sized reads and
/// writes, stopping early only when `to` takes less than offered (full) or the file ends.
fn copy_file<T: Transport + ?Sized>(
    to: &mut T,
    file: &std::fs::File,
    offset: u64,
    count: usize,
    scratch: &mut [u8],
) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut sent = 0;
    while sent < count {
        let len = (count - sent).min(scratch.len());
        let read = file.read_at(&mut scratch[..len], offset + sent as u64)?;
        if read == 0 {
            break; // the file ended
        }
        match to.write(&scratch[..read]) {
            Ok(n) => {
                sent += n;
                if n < read {
                    break; // full
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && sent > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// A client's socket on an event loop, with the TLS session over it when the listener
/// speaks TLS.
pub struct Wire {
    pub socket: mio::net::TcpStream,
    pub tls: Option<Box<TlsLayer>>,
    /// The session waits for a PROXY protocol header, which comes before it in cleartext.
    pub tls_after_proxy: bool,
}

impl Wire {
    pub fn plain(socket: mio::net::TcpStream) -> Wire {
        Wire {
            socket,
            tls: None,
            tls_after_proxy: false,
        }
    }

    /// A socket back from another stage (a worker, or the HTTP side for a session), with
    /// the TLS session it travelled with, if any (begun already: the PROXY header, if any,
    /// was read before it left).
    pub fn resumed(socket: mio::net::TcpStream, tls: Option<Box<TlsLayer>>) -> Wire {
        Wire {
            socket,
            tls,
            tls_after_proxy: false,
        }
    }

    /// A TLS session starting on its first byte, or, when `after_proxy`, after the PROXY
    /// protocol header.
    pub fn tls(socket: mio::net::TcpStream, tls: TlsLayer, after_proxy: bool) -> Wire {
        Wire {
            socket,
            tls: Some(Box::new(tls)),
            tls_after_proxy: after_proxy,
        }
    }

    /// The TLS session, once bytes go through it.
    fn session_ref(&self) -> Option<&TlsLayer> {
        match self.tls_after_proxy {
            true => None,
            false => self.tls.as_deref(),
        }
    }

    fn session(&mut self) -> Option<&mut TlsLayer> {
        match self.tls_after_proxy {
            true => None,
            false => self.tls.as_deref_mut(),
        }
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Wire { socket, tls, .. } = self;
        match (self.tls_after_proxy, tls) {
            (false, Some(tls)) => {
                let read = tls.read(socket, buf, Mode::NonBlocking);
                if tls.fin_due() {
                    let _ = socket.shutdown(Shutdown::Write);
                }
                read
            }
            _ => socket.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Wire { socket, tls, .. } = self;
        match (self.tls_after_proxy, tls) {
            (false, Some(tls)) => tls.write(socket, buf),
            _ => socket.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let Wire { socket, tls, .. } = self;
        match (self.tls_after_proxy, tls) {
            (false, Some(tls)) => tls.write_vectored(socket, bufs),
            _ => socket.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Wire {
    fn reset_if_unsent(&self) -> bool {
        crate::sys::reset_if_unsent(&self.socket)
    }

    fn acked(&self) -> Option<u32> {
        crate::sys::tcp_acked(&self.socket)
    }

    fn unsent(&self) -> Option<usize> {
        crate::sys::tcp_unsent_bytes(&self.socket).ok()
    }

    fn report_writable_below(&mut self, bytes: Option<u32>) -> bool {
        crate::sys::set_notsent_lowat(&self.socket, bytes.unwrap_or(0)).unwrap_or(true)
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        let Wire { socket, tls, .. } = self;
        if let (false, Some(tls)) = (self.tls_after_proxy, tls) {
            // close_notify after what waits; the FIN once it is all out.
            if !tls.close(socket)? {
                return Ok(());
            }
        }
        self.socket.shutdown(Shutdown::Write)
    }

    fn flush_pending(&mut self) -> io::Result<bool> {
        let Wire { socket, tls, .. } = self;
        match (self.tls_after_proxy, tls) {
            (false, Some(tls)) => {
                let all_out = tls.flush(socket)?;
                if all_out && tls.fin_due() {
                    socket.shutdown(Shutdown::Write)?;
                }
                Ok(all_out)
            }
            _ => Ok(true),
        }
    }

    fn has_pending(&self) -> bool {
        self.session_ref().is_some_and(|tls| tls.has_pending())
    }

    fn tls(&self) -> Option<&TlsLayer> {
        self.session_ref()
    }

    fn tls_waits(&self) -> bool {
        self.tls.is_some() && self.tls_after_proxy
    }

    fn send_file(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        count: usize,
        scratch: &mut [u8],
    ) -> io::Result<usize> {
        if self.session().is_some() {
            // Encrypted in user space: reads of the file, then through the session.
            return copy_file(self, file, offset, count, scratch);
        }
        let mut at = offset;
        crate::sys::sendfile(&self.socket, file, &mut at, count)
    }

    fn proxy_header_read(&mut self, rest: &mut Vec<u8>) -> io::Result<()> {
        if self.tls.is_some() && std::mem::take(&mut self.tls_after_proxy) {
            let ciphertext = std::mem::take(rest);
            if let Some(tls) = self.session() {
                tls.feed(&ciphertext)?;
            }
        }
        Ok(())
    }
}
