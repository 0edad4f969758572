//! Testing a [`Protocol`] without the daemon: build a request, call `negotiate`, and run
//! `serve` on one end of a real loopback TCP connection while the test talks on the other.
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

use crate::abi::{RawBytes, RawConnection, RawHeader, RawRequest};
use crate::{Connection, Decision, Protocol, Request};
use core::ffi::c_void;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
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
    /// element), as the daemon does.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if name.eq_ignore_ascii_case("upgrade") && self.protocol.is_empty() {
            self.protocol = value.split(',').next().unwrap_or("").trim().to_string();
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
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let thread = std::thread::spawn(move || {
        let mut host = TestHost { stream: server };
        let fd = host.stream.as_raw_fd();
        let raw = RawConnection {
            ctx: (&mut host as *mut TestHost).cast(),
            read: host_read,
            write: host_write,
            write_vectored: host_write_vectored,
            shutdown: host_shutdown,
            set_read_timeout: host_set_read_timeout,
            buffered: host_buffered,
            is_stopping: host_is_stopping,
            fd,
            set_write_timeout: None,
            // A blocking connection: nothing to watch.
            watch: None,
            unwatch: None,
        };
        // SAFETY: `raw` and the host it points to outlive the call.
        let mut connection = unsafe { Connection::from_raw(&raw) };
        request.with(|request| plugin.serve(session, request, &mut connection))
    });
    (client, thread)
}

/// The test's stand-in for the daemon's side of a connection.
struct TestHost {
    stream: TcpStream,
}

fn code(result: io::Result<usize>, n: *mut usize) -> i32 {
    match result {
        Ok(count) => {
            // SAFETY: the out-pointer of the call.
            unsafe { *n = count };
            0
        }
        Err(e) => e.raw_os_error().unwrap_or(libc_eio()),
    }
}

const fn libc_eio() -> i32 {
    5 // EIO on every Unix
}

/// # Safety
/// `ctx` is the `TestHost` of the connection, alive for the call.
unsafe fn host<'a>(ctx: *mut c_void) -> &'a mut TestHost {
    // SAFETY: the caller's contract.
    unsafe { &mut *ctx.cast::<TestHost>() }
}

fn guarded(body: impl FnOnce() -> i32) -> i32 {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(libc_eio())
}

unsafe extern "C" fn host_read(ctx: *mut c_void, buf: *mut u8, len: usize, n: *mut usize) -> i32 {
    guarded(|| {
        let buf: &mut [u8] = if len == 0 {
            &mut []
        } else {
            // SAFETY: `buf` is writable for `len` bytes during the call.
            unsafe { std::slice::from_raw_parts_mut(buf, len) }
        };
        // SAFETY: `ctx` per the ABI.
        code(unsafe { host(ctx) }.stream.read(buf), n)
    })
}

unsafe extern "C" fn host_write(
    ctx: *mut c_void,
    buf: *const u8,
    len: usize,
    n: *mut usize,
) -> i32 {
    guarded(|| {
        // SAFETY: `buf` is readable for `len` bytes during the call.
        let buf = unsafe { RawBytes { ptr: buf, len }.as_slice() };
        // SAFETY: `ctx` per the ABI.
        code(unsafe { host(ctx) }.stream.write(buf), n)
    })
}

unsafe extern "C" fn host_write_vectored(
    ctx: *mut c_void,
    bufs: *const RawBytes,
    count: usize,
    n: *mut usize,
) -> i32 {
    guarded(|| {
        let raw: &[RawBytes] = if count == 0 {
            &[]
        } else {
            // SAFETY: `bufs` holds `count` slices lent for the call.
            unsafe { std::slice::from_raw_parts(bufs, count) }
        };
        // SAFETY: each slice is lent for the call.
        let slices: Vec<IoSlice<'_>> = raw
            .iter()
            .map(|b| IoSlice::new(unsafe { b.as_slice() }))
            .collect();
        // SAFETY: `ctx` per the ABI.
        code(unsafe { host(ctx) }.stream.write_vectored(&slices), n)
    })
}

unsafe extern "C" fn host_shutdown(ctx: *mut c_void, how: u32) -> i32 {
    guarded(|| {
        let how = match how {
            crate::abi::SHUTDOWN_READ => Shutdown::Read,
            crate::abi::SHUTDOWN_WRITE => Shutdown::Write,
            _ => Shutdown::Both,
        };
        // SAFETY: `ctx` per the ABI.
        match unsafe { host(ctx) }.stream.shutdown(how) {
            Ok(()) => 0,
            Err(e) => e.raw_os_error().unwrap_or(libc_eio()),
        }
    })
}

unsafe extern "C" fn host_set_read_timeout(ctx: *mut c_void, millis: u64) -> i32 {
    guarded(|| {
        let timeout = (millis > 0).then(|| Duration::from_millis(millis));
        // SAFETY: `ctx` per the ABI.
        match unsafe { host(ctx) }.stream.set_read_timeout(timeout) {
            Ok(()) => 0,
            Err(e) => e.raw_os_error().unwrap_or(libc_eio()),
        }
    })
}

unsafe extern "C" fn host_buffered(_: *mut c_void) -> usize {
    0
}

unsafe extern "C" fn host_is_stopping(_: *mut c_void) -> u8 {
    0
}
