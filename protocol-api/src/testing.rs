//! Testing a plugin without the daemon: build a request, call `negotiate`, and run the
//! connection on one end of a real loopback TCP connection while the test talks on the
//! other: `serve` of a [`Protocol`] on a thread ([`serve`]), or an
//! [`EventProtocol`](crate::EventProtocol)'s `start` and `on_ready` calls as the daemon's
//! event loop makes them ([`serve_ready`]). The host callbacks are the daemon's own
//! ([`crate::hosting`]).
//!
//! ```
//! # use protocol_api::{Connection, Decision, Protocol, Request};
//! # use std::io::{self, Read, Write};
//! # struct Echo;
//! # impl Protocol for Echo {
//! #     const NAME: &'static str = "echo";
//! #     const TOKENS: &'static [&'static str] = &["echo"];
//! #     type Session = ();
//! #     fn new() -> Result<Self, String> { Ok(Echo) }
//! #     fn negotiate(&self, _: &Request<'_>) -> Decision<()> { Decision::accept(()) }
//! #     fn serve(&self, _: (), _: &Request<'_>, conn: &mut Connection<'_>) -> io::Result<()> {
//! #         let mut buf = [0u8; 64];
//! #         loop {
//! #             let n = conn.read(&mut buf)?;
//! #             if n == 0 { return Ok(()); }
//! #             conn.write_all(&buf[..n])?;
//! #         }
//! #     }
//! # }
//! use protocol_api::testing::TestRequest;
//!
//! let request = TestRequest::get("/chat").header("Upgrade", "echo");
//! let Decision::Accept { session, .. } = request.negotiate(&Echo) else {
//!     panic!("refused")
//! };
//! let (mut client, served) = protocol_api::testing::serve(Echo, session, request);
//! client.write_all(b"hello").unwrap();
//! let mut echoed = [0u8; 5];
//! client.read_exact(&mut echoed).unwrap();
//! assert_eq!(&echoed, b"hello");
//! drop(client);
//! served.join().unwrap().unwrap();
//! ```

// The harness is epoll's, as the daemon is: Linux only.
#[cfg(target_os = "linux")]
mod readiness;

#[cfg(target_os = "linux")]
pub use readiness::serve_ready;

use crate::abi::{RawBytes, RawHeader, RawRequest};
use crate::hosting::{raw_connection, HostConnection};
use crate::{Connection, Decision, Protocol, Request};
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::Duration;

/// A request as the daemon would hand it to a plugin, owned by the test.
#[derive(Clone, Debug)]
pub struct TestRequest {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    peer: String,
    protocol: String,
    arrival: u32,
}

impl TestRequest {
    /// `GET target HTTP/1.1` from `127.0.0.1:40000`, with `Host: test`.
    pub fn get(target: &str) -> TestRequest {
        TestRequest {
            method: "GET".into(),
            target: target.into(),
            headers: vec![("Host".into(), b"test".to_vec())],
            body: Vec::new(),
            peer: "127.0.0.1:40000".into(),
            protocol: String::new(),
            arrival: crate::abi::ARRIVAL_UPGRADE,
        }
    }

    /// A connection that began with the HTTP/2 preface (prior knowledge): `PRI *`, no
    /// headers, protocol `h2c`, as the daemon hands it over.
    pub fn prior_knowledge() -> TestRequest {
        TestRequest {
            method: "PRI".into(),
            target: "*".into(),
            headers: Vec::new(),
            body: Vec::new(),
            peer: "127.0.0.1:40000".into(),
            protocol: "h2c".into(),
            arrival: crate::abi::ARRIVAL_PRIOR_KNOWLEDGE,
        }
    }

    /// Another method (`POST` for a request with a body, say).
    pub fn method(mut self, method: &str) -> Self {
        self.method = method.into();
        self
    }

    /// Adds a header. `Upgrade` also sets the protocol being negotiated (its first
    /// element), as the daemon does; `Host` replaces the one [`TestRequest::get`] gives
    /// (the daemon answers a request with two `400`, RFC 9112 §3.2).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if name.eq_ignore_ascii_case("upgrade") && self.protocol.is_empty() {
            self.protocol = value.split(',').next().unwrap_or("").trim().to_string();
        }
        if name.eq_ignore_ascii_case("host") {
            self.headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case("host"));
        }
        self.headers.push((name.into(), value.as_bytes().to_vec()));
        self
    }

    /// The request body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Lends the request, in the ABI's shape, to `f`.
    pub fn with<R>(&self, f: impl FnOnce(&Request<'_>) -> R) -> R {
        let headers: Vec<RawHeader> = self
            .headers
            .iter()
            .map(|(n, v)| RawHeader {
                name: RawBytes::new(n.as_bytes()),
                value: RawBytes::new(v),
            })
            .collect();
        let raw = RawRequest {
            method: RawBytes::new(self.method.as_bytes()),
            target: RawBytes::new(self.target.as_bytes()),
            version_minor: 1,
            headers: headers.as_ptr(),
            headers_len: headers.len(),
            peer: RawBytes::new(self.peer.as_bytes()),
            body: RawBytes::new(&self.body),
            protocol: RawBytes::new(self.protocol.as_bytes()),
            arrival: self.arrival,
            may_block: 1, // the test host negotiates on the calling thread
            tls: 0,
            tls_version: RawBytes::new(&[]),
            tls_cipher: RawBytes::new(&[]),
            tls_alpn: RawBytes::new(&[]),
            tls_server_name: RawBytes::new(&[]),
            tls_client_subject: RawBytes::new(&[]),
        };
        // The test host is this crate's own ABI version.
        crate::host::note_host_minor(crate::abi::ABI_MINOR);
        // SAFETY: every pointer in `raw` borrows from `self` or `headers`, both alive
        // for the call.
        let request = unsafe { Request::from_raw(&raw) };
        f(&request)
    }

    /// Calls `plugin.negotiate` on this request.
    pub fn negotiate<P: Protocol>(&self, plugin: &P) -> Decision<P::Session> {
        self.with(|request| plugin.negotiate(request))
    }
}

/// Runs `plugin.serve(session, request, ..)` on a thread, on one end of a loopback TCP
/// connection; returns the other end and the thread (its `serve` result). The connection
/// behaves as the daemon's does: blocking, no read-ahead, `is_stopping` false.
pub fn serve<P: Protocol>(
    plugin: P,
    session: P::Session,
    request: TestRequest,
) -> (TcpStream, JoinHandle<io::Result<()>>) {
    let (client, server) = loopback();
    let thread = std::thread::spawn(move || {
        let mut host = TestHost { stream: server };
        let fd = host.stream.as_raw_fd();
        let raw = raw_connection(&mut host, fd);
        // SAFETY: `raw` and the host it points to outlive the call.
        let mut connection = unsafe { Connection::from_raw(&raw) };
        request.with(|request| plugin.serve(session, request, &mut connection))
    });
    (client, thread)
}

/// Both ends of a new loopback TCP connection: the test's (reads time out after 10 s, so a
/// plugin that never answers fails the test instead of hanging it), and the plugin's.
fn loopback() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (client, server)
}

/// The test's stand-in for the daemon's side of a blocking connection: the socket, no
/// read-ahead, never stopping. Its callbacks are the daemon's ([`crate::hosting`]).
struct TestHost {
    stream: TcpStream,
}

impl HostConnection for TestHost {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.stream.write_vectored(bufs)
    }
    fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        self.stream.shutdown(how)
    }
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }
    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_write_timeout(timeout)
    }
    fn buffered(&self) -> usize {
        0
    }
    fn is_stopping(&self) -> bool {
        false
    }
}
