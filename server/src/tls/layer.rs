//! One TLS session over a client's socket: plaintext in and out, ciphertext on the socket.
//! The same value serves an event loop (non-blocking socket) and a worker (blocking one):
//! it holds no socket, each call borrows it, so the session travels with the connection
//! between them ([`crate::connection::Transit`]).
//!
//! It keeps the promise every transport makes the daemon's readers
//! ([`crate::connection::transport::Transport`]): a read that returns less than asked
//! drained the socket (or the stream ended), so the caller can wait for the next readable
//! event instead of spending a call on `WouldBlock`. A plaintext read may need several
//! socket reads (rustls reads at most 4 KiB at a time), and stops at the first short one.
//!
//! Until the handshake is done, what a client may make a session hold is bounded by
//! [`FlightLimit`]: rustls alone would keep up to 64 KiB of a handshake message that
//! arrives in pieces, four times what a cleartext request head may take. After it, by
//! [`WITHOUT_DATA`]: a handshake message may still come (a KeyUpdate), and rustls would
//! hold 64 KiB of one that never ends as well.
//!
//! Writes encrypt what they are given and write it out at once. What the socket did not
//! take stays in the session ([`TlsLayer::has_pending`]) and goes first on the next write
//! or [`TlsLayer::flush`]: the owner of the connection calls `flush` on every writable
//! event, so that nothing waits for a write that may never come.

use rustls::ServerConnection;
use std::io::{self, Read, Write};

/// Most ciphertext a session holds for a slow client before writes stop taking plaintext,
/// stated here because the write time-out and the output limits count on it. Half of
/// rustls's default: a client that takes little keeps this much per connection for as
/// long as it reads now and then, and 64 KiB made a TLS tunnel to such a client 98 KiB
/// (84 KiB with 32; an attacker's review). 16 KiB (nginx's `ssl_buffer_size`) cost bulk
/// downloads about 12% (a write system call a record); 32 KiB measured as fast as 64.
const SEND_BUFFER_LIMIT: usize = 32 * 1024;

/// Most ciphertext a client may send between two of our handshake flights (its
/// ClientHello; its second after a HelloRetryRequest; its certificates, Finished and first
/// bytes of data) before the session is refused as [`HandshakeTooLarge`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlightLimit(pub usize);

impl FlightLimit {
    /// Without client certificates: 16 KiB, BoringSSL's limit on a handshake message that
    /// carries no certificate chain and the cleartext head's own. A browser's ClientHello,
    /// post-quantum key share and all, is under 2 KiB.
    pub const SERVER_ONLY: FlightLimit = FlightLimit(16 * 1024);
    /// When clients may present certificates: rustls's largest handshake message (64 KiB,
    /// a certificate chain) and 16 KiB for the rest of the flight.
    pub const CLIENT_CERTIFICATES: FlightLimit = FlightLimit(80 * 1024);
}

/// Most ciphertext a client may send once the handshake is done without any of it coming
/// out as data: one record of the largest size a peer may send (2^14 + 2,048 bytes and its
/// 5-byte header, RFC 5246 §6.2.3; TLS 1.3's are smaller), which a reader may take in
/// pieces, and room for records that carry no data (a KeyUpdate, an alert). Past it, the
/// client is keeping us holding a handshake message it never ends (rustls would keep 64
/// KiB of one) and the session fails with [`NoData`]. The one legitimate client this
/// refuses sends records of padding alone (RFC 8446 §5.4, "traffic analysis cover") worth
/// more than 20 KiB in a row: no browser, curl, OpenSSL or Go stack does; the pieces of a
/// handshake message cannot be told from them from outside rustls.
pub const WITHOUT_DATA: usize = 20 * 1024;

/// The client sent [`WITHOUT_DATA`] bytes after the handshake and none of it was data.
#[derive(Debug)]
pub struct NoData;

impl std::fmt::Display for NoData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{WITHOUT_DATA} bytes of TLS from the client after the handshake and no data in them"
        )
    }
}

impl std::error::Error for NoData {}

/// The client sent more than its [`FlightLimit`] without the handshake moving on: a
/// ClientHello no client sends, or one sent to make us hold its bytes. The connection is
/// closed (counted as `too_large`).
#[derive(Debug)]
pub struct HandshakeTooLarge(pub usize);

impl std::fmt::Display for HandshakeTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "more than {} bytes of handshake from the client in one flight",
            self.0
        )
    }
}

impl std::error::Error for HandshakeTooLarge {}

/// A server-side TLS session, handshaking or established.
pub struct TlsLayer {
    conn: ServerConnection,
    limit: FlightLimit,
    /// Ciphertext the client may still send before our next flight (while handshaking),
    /// or before some of it comes out as data (after: [`WITHOUT_DATA`]).
    flight_left: usize,
    /// The peer's end reached us (a `close_notify`, or the socket's end); reads return 0.
    ended: bool,
    /// The session failed with [`NoData`] (see [`TlsLayer::failed_without_data`]).
    sent_no_data: bool,
    /// Our direction was shut (close_notify sealed) while ciphertext still waited: the
    /// socket's FIN goes once it is all out ([`TlsLayer::flush`]'s caller sends it).
    pub fin_owed: bool,
}

/// A reader over the socket that notes a short read (the kernel had no more for now) and
/// reads no more than `most`.
struct NoteShort<'a, S> {
    socket: &'a mut S,
    most: usize,
    short: bool,
}

impl<S: Read> Read for NoteShort<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let most = self.most.min(buf.len());
        let buf = &mut buf[..most];
        let n = retry(|| self.socket.read(buf))?;
        self.short = n < buf.len();
        Ok(n)
    }
}

fn retry<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Whether a read may wait for the socket (a worker's blocking socket) or must stop at
/// the first sign it is drained (an event loop's).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Return as soon as there is plaintext; a socket read may block.
    Blocking,
    /// Fill the buffer until the socket is drained.
    NonBlocking,
}

impl TlsLayer {
    pub fn new(mut conn: ServerConnection, limit: FlightLimit) -> TlsLayer {
        conn.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
        TlsLayer {
            conn,
            limit,
            flight_left: limit.0,
            ended: false,
            sent_no_data: false,
            fin_owed: false,
        }
    }

    /// The session failed with [`NoData`] (the daemon logs it and names it in the
    /// connection's access line).
    pub fn failed_without_data(&self) -> bool {
        self.sent_no_data
    }

    /// The rustls session, for what the handshake settled (version, cipher, ALPN, SNI).
    pub fn session(&self) -> &ServerConnection {
        &self.conn
    }

    /// What the handshake settled, once it is done.
    pub fn summary(&self) -> Option<super::Summary> {
        super::Summary::of(&self.conn)
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The client's stream has ended (close_notify, or the socket's end): what a read
    /// returns short after it is the last, and the next returns 0.
    pub fn has_ended(&self) -> bool {
        self.ended
    }

    /// Ciphertext waits for the socket, or the FIN after it: flush on the next writable
    /// event.
    pub fn has_pending(&self) -> bool {
        self.conn.wants_write() || self.fin_owed
    }

    /// The FIN is owed and nothing waits before it any more (a read's flush wrote the
    /// rest): true once, for the caller to shut the socket's write side.
    pub fn fin_due(&mut self) -> bool {
        let due = self.fin_owed && !self.conn.wants_write();
        if due {
            self.fin_owed = false;
        }
        due
    }

    /// Feeds ciphertext that was read before this session began (bytes after a PROXY
    /// protocol header, read in the same call as it).
    pub fn feed(&mut self, mut ciphertext: &[u8]) -> io::Result<()> {
        while !ciphertext.is_empty() {
            let most = self.readable_now()?;
            let mut from = &ciphertext[..most.min(ciphertext.len())];
            let n = self.conn.read_tls(&mut from)?;
            if n == 0 {
                break; // rustls takes no more (a close_notify came)
            }
            ciphertext = &ciphertext[n..];
            self.took(n);
            self.process()?;
        }
        Ok(())
    }

    /// How much ciphertext may be read now: what is left of the client's flight, or after
    /// the handshake of [`WITHOUT_DATA`]; at 0 the session fails.
    fn readable_now(&mut self) -> io::Result<usize> {
        match (self.conn.is_handshaking(), self.flight_left) {
            (true, 0) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                HandshakeTooLarge(self.limit.0),
            )),
            (false, 0) => {
                self.sent_no_data = true;
                Err(io::Error::new(io::ErrorKind::InvalidData, NoData))
            }
            (_, left) => Ok(left),
        }
    }

    /// Counts `n` bytes of ciphertext against what the client may still send.
    fn took(&mut self, n: usize) {
        self.flight_left = self.flight_left.saturating_sub(n);
    }

    /// Reads plaintext into `buf`, reading the socket as needed (and answering the
    /// handshake on the way). `Ok(0)` is the peer's end; `WouldBlock` means nothing came.
    /// A TLS error is `InvalidData` (the alert that says why was sent if the socket took it).
    pub fn read<S: Read + Write>(
        &mut self,
        socket: &mut S,
        buf: &mut [u8],
        mode: Mode,
    ) -> io::Result<usize> {
        let mut filled = 0;
        // The socket had no more (a short read, or `WouldBlock`): what it gave is taken
        // from the session, then the read stops.
        let mut drained = false;
        loop {
            match self.conn.reader().read(&mut buf[filled..]) {
                Ok(0) if filled < buf.len() => self.ended = true, // close_notify
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket ended without close_notify: an end all the same (the protocols
                // carried have their own ends; a cut one shows there).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => self.ended = true,
                Err(e) => return Err(e),
            }
            if filled == buf.len() || self.ended || (mode == Mode::Blocking && filled > 0) {
                return Ok(filled);
            }
            if drained {
                // What the socket gave may have ended the stream after the plaintext just
                // taken (the last data and close_notify in one read): looked at once more,
                // or the end would wait for an event the socket never brings.
                if filled > 0 {
                    match self.conn.reader().read(&mut buf[filled..]) {
                        Ok(0) => self.ended = true,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => self.ended = true,
                        Err(_) => {}
                    }
                }
                // The socket is drained: rustls keeps the buffer its last record was put
                // together in (up to 16 KiB + 4 KiB) until its next read, which a quiet
                // connection never makes. A read that says `WouldBlock` at once lets it
                // shrink that buffer to 4 KiB when no part of a record is in it (a partial
                // record stays), with no system call.
                self.release_read_buffer();
                return match filled {
                    0 => Err(io::ErrorKind::WouldBlock.into()),
                    n => Ok(n),
                };
            }
            let mut from = NoteShort {
                socket: &mut *socket,
                most: self.readable_now()?,
                short: false,
            };
            drained = match self.conn.read_tls(&mut from) {
                Ok(0) => false, // the end: the next look at the plaintext says so
                // A blocking socket's reads are short whenever less has arrived than
                // rustls asked for: it reads on (and waits) until there is plaintext.
                Ok(n) => {
                    let short = from.short;
                    self.took(n);
                    short && mode == Mode::NonBlocking
                }
                // On a blocking socket, its read time-out: the caller's `WouldBlock`.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                Err(e) => return Err(e),
            };
            if let Err(e) = self.process() {
                let _ = self.flush(socket); // the alert, if the socket takes it
                return Err(e);
            }
            if self.conn.wants_write() {
                // Handshake messages, key updates, session tickets: best effort now, the
                // rest on the next writable event (the connection's owner flushes then).
                self.flush(socket)?;
            }
        }
    }

    /// Lets rustls shrink its record buffer (it does so at the start of a read when the
    /// buffer holds no part of a record) by asking it to read from a source that has nothing.
    fn release_read_buffer(&mut self) {
        struct Nothing;
        impl Read for Nothing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
        if !self.ended {
            let _ = self.conn.read_tls(&mut Nothing);
        }
    }

    fn process(&mut self) -> io::Result<()> {
        let quiet = !self.conn.wants_write();
        let handshaking = self.conn.is_handshaking();
        match self.conn.process_new_packets() {
            Ok(state) => {
                if !self.conn.is_handshaking() {
                    if handshaking || state.plaintext_bytes_to_read() > 0 {
                        // Done, or data came: what a client may send without data starts
                        // again. (No data comes between the pieces of a handshake message:
                        // RFC 8446 §5.1 forbids it, and rustls refuses it.)
                        self.flight_left = WITHOUT_DATA;
                    }
                } else if quiet && self.conn.wants_write() {
                    // Our next flight: the client's answer may be as large as its first.
                    self.flight_left = self.limit.0;
                }
                Ok(())
            }
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }

    /// Encrypts what fits of `buf` and writes it out. Ciphertext left from an earlier write
    /// goes first; if the socket takes none of it, `WouldBlock`, and nothing of `buf` is
    /// taken.
    pub fn write<S: Write>(&mut self, socket: &mut S, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(socket, &[io::IoSlice::new(buf)])
    }

    /// As [`TlsLayer::write`], with the slices sealed into records together.
    pub fn write_vectored<S: Write>(
        &mut self,
        socket: &mut S,
        bufs: &[io::IoSlice<'_>],
    ) -> io::Result<usize> {
        if !self.flush(socket)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let offered: usize = bufs.iter().map(|b| b.len()).sum();
        // rustls seals at most SEND_BUFFER_LIMIT at a time; taking less than offered must
        // mean the socket is full, so seal and write until all is taken or it is.
        let mut taken = self.conn.writer().write_vectored(bufs)?;
        let mut all_out = self.flush(socket)?;
        if taken < offered && all_out {
            let mut rest: Vec<io::IoSlice<'_>> = bufs.to_vec();
            let mut rest = &mut rest[..];
            io::IoSlice::advance_slices(&mut rest, taken);
            while taken < offered && all_out {
                let n = self.conn.writer().write_vectored(rest)?;
                if n == 0 {
                    break; // rustls holds its most (before the handshake): not the socket's doing
                }
                io::IoSlice::advance_slices(&mut rest, n);
                taken += n;
                all_out = self.flush(socket)?;
            }
        }
        Ok(taken)
    }

    /// Writes out waiting ciphertext; true when none is left. On a blocking socket a
    /// `false` means its write time-out passed.
    pub fn flush<S: Write>(&mut self, socket: &mut S) -> io::Result<bool> {
        while self.conn.wants_write() {
            match retry(|| self.conn.write_tls(socket)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Ends our direction: `close_notify` sealed after what waits, and written if the
    /// socket takes it. True when all is out (the caller shuts the socket's write side
    /// now); false when ciphertext still waits: the FIN is owed ([`TlsLayer::fin_owed`])
    /// once a later [`TlsLayer::flush`] has written it.
    pub fn close<S: Write>(&mut self, socket: &mut S) -> io::Result<bool> {
        self.conn.send_close_notify();
        let all_out = self.flush(socket)?;
        self.fin_owed = !all_out;
        Ok(all_out)
    }
}
