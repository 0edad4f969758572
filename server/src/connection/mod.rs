//! One client connection as the daemon holds it, whatever it speaks: the byte stream under
//! it ([`transport`]) and the value it travels as between stages ([`Transit`]): from
//! HTTP/1.1 to a plugin, and between an event loop and a worker. What is owed to it is a
//! [`protocol_api::output::Output`], the one write loop the daemon and plugins share.

pub mod closing;
pub mod transport;

use crate::daemon::state::Ticket;
use crate::tls::layer::TlsLayer;
use std::io;
use std::net::SocketAddr;

/// A client connection between two stages: its stream (a mio socket on an event loop, a
/// blocking one on a worker), who the client is (the PROXY protocol's address when that is
/// on), its place in the connection limits, and the bytes it sent past the request that
/// were already read: the new protocol's first bytes, or the next request. Nothing is lost
/// on the way: the next stage reads `read_ahead` before its socket. On a TLS listener the
/// session travels with the socket: `read_ahead` is plaintext, what the session holds is
/// read before the socket, and every byte goes through it.
pub struct Transit<S> {
    pub stream: S,
    pub tls: Option<Box<TlsLayer>>,
    pub peer: SocketAddr,
    pub ticket: Ticket,
    pub read_ahead: Vec<u8>,
}

impl Transit<mio::net::TcpStream> {
    /// For a worker: a blocking socket (the event loop has deregistered it).
    pub fn into_blocking(self) -> io::Result<Transit<std::net::TcpStream>> {
        let stream = std::net::TcpStream::from(self.stream);
        stream.set_nonblocking(false)?;
        Ok(Transit {
            stream,
            tls: self.tls,
            peer: self.peer,
            ticket: self.ticket,
            read_ahead: self.read_ahead,
        })
    }
}

impl Transit<std::net::TcpStream> {
    /// For an event loop: a non-blocking socket, to register.
    pub fn into_nonblocking(self) -> io::Result<Transit<mio::net::TcpStream>> {
        self.stream.set_nonblocking(true)?;
        Ok(Transit {
            stream: mio::net::TcpStream::from_std(self.stream),
            tls: self.tls,
            peer: self.peer,
            ticket: self.ticket,
            read_ahead: self.read_ahead,
        })
    }
}
