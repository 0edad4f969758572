//! The C ABI that crosses the library boundary, and nothing else.
//!
//! Rust has no stable ABI, so the daemon and a plugin built by another compiler (or the same
//! compiler with other flags) share only what is declared here: `#[repr(C)]` structs of raw
//! pointers and integers, and `extern "C"` function pointers.
//!
//! Rules both sides keep:
//! - **Versioning.** The major version is in the entry symbol's name ([`ENTRY_SYMBOL`]); a
//!   breaking change gets a new symbol. Within a major version, structs only grow at the end:
//!   [`PluginDescriptor::size`] tells the host how much of the descriptor the plugin filled, and
//!   [`HostApi::abi_minor`] tells the plugin which host fields exist.
//! - **Borrowing.** A [`RawBytes`] or any pointer handed to a call is valid only for that call.
//! - **Ownership.** Whoever allocates frees. Plugin state and sessions are allocated by the
//!   plugin and only ever handed back to the plugin (`serve`, `drop_session`); everything the
//!   plugin tells the host is copied by the host inside a sink callback.
//! - **No unwinding across.** Every function on either side catches panics and turns them into
//!   a status code; since Rust 1.81 an unwind escaping `extern "C"` aborts the process.
//! - **One thread at a time per connection.** The host's callbacks for one connection
//!   ([`RawConnection`]) must never be called from two threads at once, and only during the
//!   plugin call that lent them. Plugin state (`init`'s `*state`) is shared by every thread
//!   that runs plugin code, at once; readiness connections (`start`'s `*conn`) stay on the
//!   one event-loop thread that made them.
//! - **NULL entries.** Function pointers are `Option`s: a C plugin may leave the ones marked
//!   optional NULL; the host checks the others at load and refuses the file with a reason.
//!
//! # Versions
//!
//! - 1.0: `init`, `negotiate`, blocking `serve`, `drop_session`; host log functions.
//! - 1.1: readiness-driven serving (`start`, `on_ready`, `drop_conn`; [`RawWants`], the
//!   `READY_*` and `WANT_*` bits); decisions in a code range of their own
//!   ([`DECISION_ACCEPT`]…, no longer equal to the status codes; the host maps a 1.0
//!   plugin's values); [`RawConnection::set_write_timeout`].
//! - 1.2: [`RawRequest::arrival`]: whether the connection asked to switch with `Upgrade` (and
//!   got a `101`) or started in the protocol itself (HTTP/2 with prior knowledge). The host
//!   hands a connection that arrived any other way than by `Upgrade` only to plugins of 1.2
//!   or later, which can tell. [`DECISION_ON_WORKER`] and [`RawRequest::may_block`]: a
//!   readiness plugin's `negotiate` (on an event loop) may ask to be asked again on a
//!   worker thread, where it may block (to dial a backend before the `101`).
//!   [`RawConnection::watch`] / [`RawConnection::unwatch`] and [`READY_WATCHED`]: a readiness
//!   connection may have the event loop watch descriptors of its own (a backend socket, a
//!   child's pipes) and be called when they may move.
//! - 1.3: [`WANT_RESUME`] / [`READY_RESUME`]: a readiness plugin that stopped with work in
//!   hand (a budget spent) asks to be called again once the loop's other connections had
//!   their turn, whether or not anything new arrived. [`READY_PEER_CLOSED`]: the peer shut
//!   its side or the connection failed, told even while the plugin is not reading it. And a
//!   host rule every version gets: a session whose call moved no byte of its connection is
//!   not called again until something happens (an event, its timer, or its own
//!   `WANT_RESUME`), so a plugin that chooses not to read never spins a core.
//! - 1.4: [`READY_WATCHED_CLOSED`]: the event of a watched descriptor said its peer shut its
//!   side (or it failed), so a plugin may take a read shorter than asked as draining a
//!   watched socket, as the host does its own, rather than read each to `EAGAIN`.
//! - 1.5: [`RawRequest::tls`] and the fields after it: the connection came over TLS, which
//!   the host terminates. Reads and writes through [`RawConnection`] are plaintext; the
//!   socket lent as [`RawConnection::fd`] carries ciphertext, so a plugin must not read,
//!   write or splice it then (socket options are fine). The host hands TLS connections only
//!   to plugins of 1.5 or later, which can tell; an older plugin's offer is skipped with a
//!   log line.
//! - 1.6: plugins describe themselves. [`PluginDescriptor::settings`]: the environment
//!   variables the plugin reads, with their defaults and meaning, which the host lists in
//!   `--help`, `--check` and its status page. [`HostApi::ctx`], [`HostApi::metric_declare`]
//!   and [`HostApi::metric_series`]: the plugin declares counters, gauges and histograms,
//!   and updates cells the host lends it with relaxed atomic adds, no call on the hot path;
//!   the host renders them in `/metrics` as `switchyard_<plugin>_<name>`. Each plugin gets
//!   its own `HostApi` (its `ctx` names the plugin), still valid as long as the process.
//! - 1.7: [`WANT_ABORT`]: close the connection and drop what its peer has not taken (a
//!   reset), for a plugin that ends a peer for taking too little: closed gracefully, the
//!   kernel would go on holding what waits for it. A host of 1.6 or earlier ignores the
//!   bit and closes as `WANT_CLOSE` does.
//! - 1.8: [`HostApi::access_line`] and [`RawExchange`]: a plugin writes an access line for
//!   each exchange inside its connection (an HTTP/2 stream), which the host formats as its
//!   own (text, or JSON with `SWITCHYARD_ACCESS_LOG=json`; `token=` values cut), under the
//!   same `switchyard::access` target, so one filter turns both on and off.
//! - 1.9: [`HostApi::access_line_named`] and [`RawRequestNames`]: an exchange's line also
//!   names its request's `Host` (HTTP/2's `:authority`), `Origin`, `Referer` and
//!   `User-Agent`, as the daemon's own lines do. A function of its own, so that a host
//!   never reads past the exchange a 1.8 plugin hands it.
//! - 1.10: [`RawConnection::waker`], [`RawWaker`] and [`READY_WOKEN`]: a readiness
//!   connection's waker, which any thread may hold past the call and use to have the
//!   connection's event loop call `on_ready` again (another connection of the plugin that
//!   has bytes for it, a thread of the plugin's own runtime that finished its work).

use core::ffi::c_void;
use core::mem::{align_of, offset_of, size_of};

/// Name of the function every plugin exports, `extern "C" fn() -> *const PluginDescriptor`.
/// The `1` is the major ABI version; a version-2 ABI would export `switchyard_plugin_v2`.
pub const ENTRY_SYMBOL: &str = "switchyard_plugin_v1";
/// The major ABI version, as it appears in [`ENTRY_SYMBOL`].
pub const ABI_MAJOR: u32 = 1;
/// The minor ABI version this crate was built with. Minor versions only append fields.
pub const ABI_MINOR: u32 = 10;
/// First bytes of every [`PluginDescriptor`]: proof that the pointer is what it claims.
pub const MAGIC: [u8; 8] = *b"SWYARD\x01\0";

/// The entry function's type.
pub type EntryFn = unsafe extern "C" fn() -> *const PluginDescriptor;

/// `negotiate` result: switch protocols (the plugin filled `session`).
pub const DECISION_ACCEPT: i32 = 0x100;
/// `negotiate` result: answer with the plugin's own status, headers and body.
pub const DECISION_REJECT: i32 = 0x101;
/// `negotiate` result: not for this plugin; the host tries the client's next choice.
pub const DECISION_DECLINE: i32 = 0x102;
/// `negotiate` result (1.2, readiness plugins): ask me again where I may block. The host
/// calls `negotiate` again for the same request on a worker thread, with
/// [`RawRequest::may_block`] set; an accept there is started on the event loop as usual.
/// Returned where `may_block` is already set, it is a plugin error (`500`).
pub const DECISION_ON_WORKER: i32 = 0x103;
/// `init`, `serve`, `start`, `on_ready`: done.
pub const STATUS_OK: i32 = 0;
/// `init`, `serve`, `start`, `on_ready`: failed; the error sink holds a message.
pub const STATUS_ERROR: i32 = 1;
/// Any call: the plugin panicked; the error sink holds the panic message.
pub const STATUS_PANIC: i32 = -1;

/// The decision values of ABI 1.0, which shared their values with the status codes. A host
/// reads them from plugins whose descriptor says `abi_minor == 0`.
pub mod v1_0 {
    /// 1.0's `DECISION_ACCEPT` (equal to `STATUS_OK`).
    pub const DECISION_ACCEPT: i32 = 0;
    /// 1.0's `DECISION_REJECT` (equal to `STATUS_ERROR`).
    pub const DECISION_REJECT: i32 = 1;
    /// 1.0's `DECISION_DECLINE`.
    pub const DECISION_DECLINE: i32 = 2;
}

/// `on_ready` `events` bit: the connection may have bytes to read (or the peer's end).
pub const READY_READABLE: u32 = 1;
/// `on_ready` `events` bit: the connection may accept more bytes.
pub const READY_WRITABLE: u32 = 2;
/// `on_ready` `events` bit: the timer the plugin asked for is due.
pub const READY_TIMER: u32 = 4;
/// `on_ready` `events` bit: the daemon is stopping (set once, on the first call after the
/// stop began): say goodbye in the protocol's terms, then ask to close.
pub const READY_STOPPING: u32 = 8;
/// (1.2) `on_ready` `events` bit: a descriptor the connection watches
/// ([`RawConnection::watch`]) may be readable or writable. Watching is edge-triggered: try
/// each watched descriptor until it would block, or the next event may never come. It may
/// also come when nothing moved.
pub const READY_WATCHED: u32 = 16;

/// (1.3) `on_ready` `events` bit: this call is the one the last answer's [`WANT_RESUME`]
/// asked for (other bits may hold too).
pub const READY_RESUME: u32 = 32;
/// (1.3) `on_ready` `events` bit: the peer has shut its sending side, or the connection
/// failed (a reset): reads will end with 0 or an error once what is buffered has been read.
/// Set on every call from the first after the host saw it, whether or not the plugin reads,
/// so that a plugin holding its peer's input back (its other side is slow) still learns
/// that the peer is gone.
pub const READY_PEER_CLOSED: u32 = 64;
/// (1.4) `on_ready` `events` bit, with [`READY_WATCHED`]: the event of a watched descriptor
/// said its peer shut its sending side or it failed (`EPOLLRDHUP`, `EPOLLHUP`, `EPOLLERR`).
/// Until it comes, every byte and end that arrives later brings an event of its own, so a
/// plain `read`/`recv` of a TCP or Unix stream socket or a pipe that returns less than
/// asked has drained it (not so for datagram sockets, a reader with its own buffer, or TCP
/// urgent data, where a read stops at the mark). The bit is not repeated: latch it. It
/// does not say which descriptor (a plugin that watches several reads each to its end or
/// `EAGAIN` from then on), and it may come when nothing closed (an event collected for a
/// connection that ended in the same turn, its slot reused), so treat it as "read to the
/// end", never as "the peer is gone". Given only to plugins of 1.4 or later.
pub const READY_WATCHED_CLOSED: u32 = 128;
/// (1.10) `on_ready` `events` bit: a [`RawWaker`] of this connection was woken since its
/// last call. Wakes before a call are told once, in one call, however many there were.
pub const READY_WOKEN: u32 = 256;

/// [`RawWants::interest`] bit: call again when the connection may be readable.
pub const WANT_READ: u32 = 1;
/// [`RawWants::interest`] bit: call again when the connection may be writable.
pub const WANT_WRITE: u32 = 2;
/// [`RawWants::interest`] bit: close the connection now (other bits are ignored).
pub const WANT_CLOSE: u32 = 4;
/// (1.3) [`RawWants::interest`] bit: I stopped with work in hand (a budget per call spent):
/// call again, with [`READY_RESUME`], once the loop's other connections had their turn,
/// whether or not anything new arrived. Ask only while there is work: the call after is
/// made at once.
pub const WANT_RESUME: u32 = 8;
/// (1.7) [`RawWants::interest`] bit, with [`WANT_CLOSE`]: close with a reset, dropping
/// what the peer has not taken yet (the kernel's send queue included), rather than send
/// it and then the end: for a peer ended for taking too little. (Nothing waiting, the
/// close is graceful.)
pub const WANT_ABORT: u32 = 16;

/// [`RawConnection::shutdown`] `how` values.
pub const SHUTDOWN_READ: u32 = 0;
/// See [`SHUTDOWN_READ`].
pub const SHUTDOWN_WRITE: u32 = 1;
/// See [`SHUTDOWN_READ`].
pub const SHUTDOWN_BOTH: u32 = 2;

/// Log levels as numbers: 0 off (never used for a record), then `log::Level` order.
pub const LOG_OFF: u32 = 0;
/// See [`LOG_OFF`].
pub const LOG_ERROR: u32 = 1;
/// See [`LOG_OFF`].
pub const LOG_WARN: u32 = 2;
/// See [`LOG_OFF`].
pub const LOG_INFO: u32 = 3;
/// See [`LOG_OFF`].
pub const LOG_DEBUG: u32 = 4;
/// See [`LOG_OFF`].
pub const LOG_TRACE: u32 = 5;

/// A borrowed byte slice. Valid only for the duration of the call it is passed to.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawBytes {
    /// The first byte; may be NULL (or dangling) when `len` is 0.
    pub ptr: *const u8,
    /// How many bytes.
    pub len: usize,
}

impl RawBytes {
    /// The empty slice (a dangling, never-read pointer is allowed for `len == 0`).
    pub const EMPTY: RawBytes = RawBytes {
        ptr: core::ptr::NonNull::<u8>::dangling().as_ptr(),
        len: 0,
    };

    /// Borrows `bytes` for the duration of a call.
    pub const fn new(bytes: &[u8]) -> RawBytes {
        RawBytes {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// Views the bytes again.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes that stay valid and unchanged for `'a`.
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the caller promises `ptr` points to `len` live bytes for `'a`.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// One request header as received (name in the client's case, value without surrounding
/// white space).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawHeader {
    /// The field name as the client spelled it.
    pub name: RawBytes,
    /// The field value, white space around it removed.
    pub value: RawBytes,
}

/// The request that asked to switch protocols, lent to `negotiate` and `serve`.
#[repr(C)]
#[derive(Debug)]
pub struct RawRequest {
    /// The method (`GET`); always valid UTF-8.
    pub method: RawBytes,
    /// The request target as sent (`/chat?room=1`); always valid UTF-8.
    pub target: RawBytes,
    /// 1 for HTTP/1.1 (the only version ever upgraded).
    pub version_minor: u32,
    /// The header fields in the order received, `headers_len` of them.
    pub headers: *const RawHeader,
    /// How many `headers`.
    pub headers_len: usize,
    /// The peer's socket address, `ip:port` in UTF-8.
    pub peer: RawBytes,
    /// The complete request body (de-chunked); empty when there was none.
    pub body: RawBytes,
    /// The `Upgrade` product being negotiated, as the client spelled it (`websocket`, `h2c`).
    pub protocol: RawBytes,
    /// (1.2) How the connection came to the plugin: [`ARRIVAL_UPGRADE`] or
    /// [`ARRIVAL_PRIOR_KNOWLEDGE`]. Present when the host's `abi_minor` is at least 2.
    pub arrival: u32,
    /// (1.2) 1 when this `negotiate` runs on a worker thread, where it may block; 0 on an
    /// event loop. Present when the host's `abi_minor` is at least 2.
    pub may_block: u32,
    /// (1.5) 1 when the connection came over TLS, which the host terminates: reads and
    /// writes through the connection are plaintext, and its socket (`fd`) carries
    /// ciphertext, not to be read, written or spliced by the plugin. 0 for cleartext.
    /// Present when the host's `abi_minor` is at least 5.
    pub tls: u32,
    /// (1.5) With `tls`: the protocol version (`TLSv1.3`, `TLSv1.2`), in UTF-8.
    pub tls_version: RawBytes,
    /// (1.5) With `tls`: the cipher suite's IANA name (`TLS13_AES_128_GCM_SHA256`).
    pub tls_cipher: RawBytes,
    /// (1.5) With `tls`: the ALPN protocol agreed (`h2`, `http/1.1`); empty when none.
    pub tls_alpn: RawBytes,
    /// (1.5) With `tls`: the host name the client asked for (SNI), lower case; empty when
    /// it named none.
    pub tls_server_name: RawBytes,
    /// (1.5) With `tls`: the subject of the client's certificate (RFC 4514's string form),
    /// verified by the host against its client CA; empty when the client presented none.
    pub tls_client_subject: RawBytes,
}

/// [`RawRequest::arrival`]: an HTTP/1.1 request with `Upgrade`; the host sends the `101`.
pub const ARRIVAL_UPGRADE: u32 = 0;
/// [`RawRequest::arrival`]: the connection began with the HTTP/2 connection preface
/// (RFC 9113 §3.3, "prior knowledge"). No `101` is sent; the host read the 24-byte preface
/// (`method` is `PRI`, `target` is `*`, no headers) and the connection's first bytes are
/// what followed it. `protocol` is `h2c`.
pub const ARRIVAL_PRIOR_KNOWLEDGE: u32 = 1;

/// The upgraded connection, lent to `serve` (blocking) or to `on_ready` (non-blocking). Its
/// functions may be called only during the call that lent it, from the thread running that
/// call or from threads it joins before returning, and never from two threads at once.
///
/// I/O functions return 0 on success or an `errno` value; `*n` receives the byte count.
/// A read of 0 bytes means end of stream. A NULL `buf` is allowed when `len` is 0. Lent to
/// `on_ready`, reads and writes never block: they fail with `EAGAIN` when nothing can move.
#[repr(C)]
pub struct RawConnection {
    /// The host's state for this connection: the first argument of every function here.
    pub ctx: *mut c_void,
    /// Reads bytes the host read ahead of the switch first, then the socket.
    pub read:
        unsafe extern "C" fn(ctx: *mut c_void, buf: *mut u8, len: usize, n: *mut usize) -> i32,
    /// Writes bytes to the socket (`send`).
    pub write:
        unsafe extern "C" fn(ctx: *mut c_void, buf: *const u8, len: usize, n: *mut usize) -> i32,
    /// Gathers `count` slices into one write (`writev`).
    pub write_vectored: unsafe extern "C" fn(
        ctx: *mut c_void,
        bufs: *const RawBytes,
        count: usize,
        n: *mut usize,
    ) -> i32,
    /// `how` is one of the `SHUTDOWN_*` constants.
    pub shutdown: unsafe extern "C" fn(ctx: *mut c_void, how: u32) -> i32,
    /// Blocking only: 0 clears the time-out; a read that times out fails with `EAGAIN`.
    /// (`EINVAL` on a readiness connection: ask for a timer instead.)
    pub set_read_timeout: unsafe extern "C" fn(ctx: *mut c_void, millis: u64) -> i32,
    /// Bytes the host holds that `read` returns before it touches the socket.
    pub buffered: unsafe extern "C" fn(ctx: *mut c_void) -> usize,
    /// Non-zero once the daemon is stopping; the host then also shuts the read side of a
    /// blocking connection so that a blocked `read` returns 0.
    pub is_stopping: unsafe extern "C" fn(ctx: *mut c_void) -> u8,
    /// The socket, lent for `setsockopt`, `splice` and the like. Never close it; read it only
    /// after `buffered` is 0.
    pub fd: i32,
    /// 1.1: how long a write may wait for the peer to take bytes before the host ends the
    /// connection (`ETIMEDOUT`); 0 restores the daemon's default
    /// (`SWITCHYARD_WRITE_TIMEOUT_MS`). Present when the host's `abi_minor` is at least 1.
    pub set_write_timeout: Option<unsafe extern "C" fn(ctx: *mut c_void, millis: u64) -> i32>,
    /// (1.2) Readiness connections only: the event loop watches `fd` (the plugin's, kept
    /// open by it) for both directions and calls `on_ready` with [`READY_WATCHED`] when it
    /// may move. Watching a descriptor twice is not an error. `EINVAL` on a blocking
    /// connection; `EMFILE` past 16 descriptors per connection.
    pub watch: Option<unsafe extern "C" fn(ctx: *mut c_void, fd: i32) -> i32>,
    /// (1.2) Stops watching `fd`; call it before closing `fd`. The host stops watching every
    /// descriptor before `drop_conn`.
    pub unwatch: Option<unsafe extern "C" fn(ctx: *mut c_void, fd: i32) -> i32>,
    // ---- ABI 1.10 ----
    /// (1.10) Readiness connections only: fills `*waker` with a waker of this connection
    /// ([`RawWaker`]), which the plugin owns from then on (it ends it with
    /// [`RawWaker::release`]). Every call gives a handle to the same connection; keep one
    /// and clone it. `EINVAL` on a blocking connection.
    pub waker: Option<unsafe extern "C" fn(ctx: *mut c_void, waker: *mut RawWaker) -> i32>,
}

/// (1.10) A handle with which any thread, at any time (but not from a signal handler: it
/// may take a lock), has a readiness connection's event loop call its `on_ready` with
/// [`READY_WOKEN`], once the call under way (if any) is over.
/// Unlike a [`RawConnection`], a waker is the plugin's: it may outlive the call that gave it
/// and the connection itself, be sent to other threads and be used from several at once;
/// its functions are the host's, so they stay valid after the plugin's library would be
/// unloaded. Each handle is ended once with `release`; `clone` makes another to end.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawWaker {
    /// The host's: the argument of the functions below.
    pub ctx: *const c_void,
    /// Asks for the call: 0, or `ESRCH` when the connection has ended (nothing happens).
    /// Cheap (no system call while the loop is running), and wakes while a call is already
    /// asked for add nothing to it.
    pub wake: unsafe extern "C" fn(ctx: *const c_void) -> i32,
    /// Another handle to the same connection: its `ctx` (the functions are the same).
    pub clone: unsafe extern "C" fn(ctx: *const c_void) -> *const c_void,
    /// Ends this handle; the `ctx` is not used again.
    pub release: unsafe extern "C" fn(ctx: *const c_void),
}

/// What a readiness connection wants next, filled by `on_ready`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawWants {
    /// `WANT_READ | WANT_WRITE`, either, none (only the timer), or `WANT_CLOSE` (with
    /// `WANT_ABORT`, 1.7, to reset).
    pub interest: u32,
    /// Non-zero: call with `READY_TIMER` once this many milliseconds have passed. Each answer
    /// replaces the timer; 0 cancels it.
    pub timer_ms: u64,
}

/// Receives a message (an error text or a panic message) by copying it.
#[repr(C)]
pub struct MessageSink {
    /// The host's state: the first argument of `set`.
    pub ctx: *mut c_void,
    /// Copies `message` (UTF-8); a later call replaces it.
    pub set: unsafe extern "C" fn(ctx: *mut c_void, message: RawBytes),
}

/// Receives what `negotiate` wants in the response: extra headers for the `101`, or the
/// status, headers and body of a rejection. The host copies everything.
#[repr(C)]
pub struct ResponseSink {
    /// The host's state: the first argument of every function here.
    pub ctx: *mut c_void,
    /// The rejection's status (300–599); not called for an accept.
    pub set_status: unsafe extern "C" fn(ctx: *mut c_void, status: u16),
    /// One more header, of the `101` or of the rejection.
    pub add_header: unsafe extern "C" fn(ctx: *mut c_void, name: RawBytes, value: RawBytes),
    /// The rejection's body.
    pub set_body: unsafe extern "C" fn(ctx: *mut c_void, body: RawBytes),
}

/// What the host offers every plugin. Lives as long as the process.
#[repr(C)]
pub struct HostApi {
    /// The host's minor ABI version: fields appended in later minors exist only when this is
    /// at least that minor.
    pub abi_minor: u32,
    /// The most verbose level the host's logger lets through (0 off … 5 trace).
    pub max_log_level: u32,
    /// 1 when a record of `level` for `target` would be written (skip building it if not).
    pub log_enabled: unsafe extern "C" fn(level: u32, target: RawBytes) -> u8,
    /// Writes one record to the daemon's log, as from `target` (both UTF-8).
    pub log: unsafe extern "C" fn(level: u32, target: RawBytes, message: RawBytes),
    // ---- ABI 1.6 ----
    /// (1.6) The host's state for this plugin: the first argument of the metric functions.
    pub ctx: *mut c_void,
    /// (1.6) Declares one metric family (see [`RawMetric`]) and writes its id to `*id`.
    /// Returns [`STATUS_OK`], or [`STATUS_ERROR`] with the reason in `error` (a name that is
    /// not `[a-z_][a-z0-9_]*`, too many labels, buckets not rising). Declaring a family
    /// again with the same shape returns the same id, whichever generation of the plugin
    /// asks: counters carry over a reload.
    pub metric_declare: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            metric: *const RawMetric,
            id: *mut u32,
            error: *const MessageSink,
        ) -> i32,
    >,
    /// (1.6) The cells of family `id`'s series for `values` (one per label name, UTF-8):
    /// `u64`s, 8-byte aligned, to be updated only with relaxed atomic operations and kept
    /// for as long as the process lives (the same pointer for the same values, always).
    /// A counter has one cell (add), a gauge one (add and subtract as two's complement
    /// `i64`), a histogram `buckets_len + 2`: a count per bucket (not cumulative; the last
    /// is `+Inf`), then the sum of the values observed. NULL for an unknown id, a wrong
    /// number of values, or past [`METRIC_MAX_SERIES`] series in the family: the plugin
    /// then counts nowhere.
    pub metric_series: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            id: u32,
            values: *const RawBytes,
            values_len: usize,
        ) -> *mut u64,
    >,
    // ---- ABI 1.8 ----
    /// (1.8) Writes one access line for `exchange` (see [`RawExchange`]), as the host
    /// writes its own, if its access log is on: ask [`HostApi::log_enabled`] for level
    /// info (4) and target `switchyard::access` first, and build nothing when it is off.
    /// Callable from any thread.
    pub access_line: Option<unsafe extern "C" fn(exchange: *const RawExchange)>,
    // ---- ABI 1.9 ----
    /// (1.9) [`HostApi::access_line`], with the request's named fields ([`RawRequestNames`]).
    pub access_line_named:
        Option<unsafe extern "C" fn(exchange: *const RawExchange, names: *const RawRequestNames)>,
}

/// (1.8) One exchange a plugin served inside its connection (an HTTP/2 stream), for the
/// host's access log ([`HostApi::access_line`]). Lent for the call; every text UTF-8 (the
/// host replaces what is not).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawExchange {
    /// The client, `address:port` (as [`RawRequest::peer`] gives it).
    pub peer: RawBytes,
    /// The request's method (`POST`).
    pub method: RawBytes,
    /// Its target as the client sent it (`/pkg.Service/Call`; the host cuts `token=`
    /// values).
    pub target: RawBytes,
    /// Its version (`HTTP/2.0`).
    pub version: RawBytes,
    /// The answer's status; 0 when none was sent (logged `-`).
    pub status: u32,
    /// The plugin's protocol token (`h2c`).
    pub protocol: RawBytes,
    /// Bytes of the exchange that came from the client (its frames' payloads: fields and
    /// body as the plugin counts them).
    pub bytes_in: u64,
    /// Bytes of the exchange that went to the client, counted alike.
    pub bytes_out: u64,
    /// How long it took, from its request's first byte to its end, in microseconds.
    pub micros: u64,
    /// Why it ended as it did, when not with its answer (a reset); empty for none.
    pub reason: RawBytes,
    /// The connection's TLS version, cipher suite and ALPN protocol as
    /// [`RawRequest::tls_version`] and the fields after it gave them; `tls_version` empty
    /// when it is not over TLS, `tls_alpn` empty when none was agreed.
    pub tls_version: RawBytes,
    /// See [`RawExchange::tls_version`].
    pub tls_cipher: RawBytes,
    /// See [`RawExchange::tls_version`].
    pub tls_alpn: RawBytes,
}

/// (1.9) The request fields an exchange's access line names
/// ([`HostApi::access_line_named`]), each as the client sent it; the host reads a field
/// only where its bit is in `sent`. Lent for the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawRequestNames {
    /// `Host` (HTTP/2: `:authority`), where `sent` has [`NAMED_HOST`].
    pub host: RawBytes,
    /// `Origin`, where `sent` has [`NAMED_ORIGIN`].
    pub origin: RawBytes,
    /// `Referer`, where `sent` has [`NAMED_REFERER`] (the host cuts `token=` values).
    pub referer: RawBytes,
    /// `User-Agent`, where `sent` has [`NAMED_USER_AGENT`].
    pub user_agent: RawBytes,
    /// Which fields the client sent (an empty one is sent, and logged `""`).
    pub sent: u32,
}

/// [`RawRequestNames::sent`]: the request had a `Host` (or `:authority`).
pub const NAMED_HOST: u32 = 1;
/// [`RawRequestNames::sent`]: the request had an `Origin`.
pub const NAMED_ORIGIN: u32 = 2;
/// [`RawRequestNames::sent`]: the request had a `Referer`.
pub const NAMED_REFERER: u32 = 4;
/// [`RawRequestNames::sent`]: the request had a `User-Agent`.
pub const NAMED_USER_AGENT: u32 = 8;

// SAFETY: a `HostApi` is never written after the host made it, and the ABI lets its
// functions be called from any thread the plugin runs; `ctx` is only handed back to them.
unsafe impl Sync for HostApi {}
// SAFETY: as above.
unsafe impl Send for HostApi {}

/// [`RawMetric::kind`]: a count that only goes up (Prometheus `counter`).
pub const METRIC_COUNTER: u32 = 0;
/// [`RawMetric::kind`]: a value that goes up and down (Prometheus `gauge`), as an `i64`.
pub const METRIC_GAUGE: u32 = 1;
/// [`RawMetric::kind`]: values counted into buckets (Prometheus `histogram`).
pub const METRIC_HISTOGRAM: u32 = 2;
/// Most label names a family may have.
pub const METRIC_MAX_LABELS: usize = 4;
/// Most buckets a histogram may have (besides `+Inf`).
pub const METRIC_MAX_BUCKETS: usize = 32;
/// Most series (sets of label values) one family keeps; past it the host hands out NULL
/// and logs it once. Label values must come from a bounded set (routes, status classes,
/// known codes), never straight from a client.
pub const METRIC_MAX_SERIES: usize = 1000;

/// (1.6) One metric family, lent to [`HostApi::metric_declare`]; the host copies it.
#[repr(C)]
#[derive(Debug)]
pub struct RawMetric {
    /// [`METRIC_COUNTER`], [`METRIC_GAUGE`] or [`METRIC_HISTOGRAM`].
    pub kind: u32,
    /// The name after `switchyard_<plugin>_` (`route_connections_total`): `[a-z_][a-z0-9_]*`.
    pub name: RawBytes,
    /// One line for Prometheus's `# HELP`.
    pub help: RawBytes,
    /// The label names, `labels_len` of them (at most [`METRIC_MAX_LABELS`]), each as a name.
    pub labels: *const RawBytes,
    /// How many `labels`.
    pub labels_len: usize,
    /// Histograms: each bucket's upper bound, rising, in the plugin's integer unit;
    /// `buckets_len` of them. Ignored for the other kinds.
    pub buckets: *const u64,
    /// How many `buckets` (at most [`METRIC_MAX_BUCKETS`]).
    pub buckets_len: usize,
    /// Histograms and gauges: how many of the plugin's units make one of the unit the
    /// name states (1,000,000 for values in microseconds of a `_seconds` metric); 0 or 1:
    /// rendered as they are.
    pub scale: u64,
}

/// (1.6) One setting a plugin reads, listed in [`PluginDescriptor::settings`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawSetting {
    /// The environment variable (`SWITCHYARD_WEBSOCKET_ROUTES`).
    pub name: RawBytes,
    /// What applies when it is not set, in words or as a value; may be empty.
    pub default: RawBytes,
    /// What it does, one line.
    pub help: RawBytes,
}

/// `init`: makes the plugin's shared state.
pub type InitFn = unsafe extern "C" fn(
    host: *const HostApi,
    state: *mut *mut c_void,
    error: *const MessageSink,
) -> i32;
/// `negotiate`: decides on one request.
pub type NegotiateFn = unsafe extern "C" fn(
    state: *const c_void,
    request: *const RawRequest,
    response: *const ResponseSink,
    session: *mut *mut c_void,
    error: *const MessageSink,
) -> i32;
/// `serve`: runs the protocol, blocking, until the connection is done.
pub type ServeFn = unsafe extern "C" fn(
    state: *const c_void,
    session: *mut c_void,
    request: *const RawRequest,
    connection: *const RawConnection,
    error: *const MessageSink,
) -> i32;
/// `drop_session`: frees a session that will not be served.
pub type DropSessionFn = unsafe extern "C" fn(state: *const c_void, session: *mut c_void);
/// `start` (1.1): makes a readiness connection's state from the session, after the `101`.
pub type StartFn = unsafe extern "C" fn(
    state: *const c_void,
    session: *mut c_void,
    request: *const RawRequest,
    conn: *mut *mut c_void,
    error: *const MessageSink,
) -> i32;
/// `on_ready` (1.1): the connection may move (see the `READY_*` bits); fills `wants`.
pub type OnReadyFn = unsafe extern "C" fn(
    state: *const c_void,
    conn: *mut c_void,
    connection: *const RawConnection,
    events: u32,
    wants: *mut RawWants,
    error: *const MessageSink,
) -> i32;
/// `drop_conn` (1.1): frees a readiness connection's state; the socket closes after it.
pub type DropConnFn = unsafe extern "C" fn(state: *const c_void, conn: *mut c_void);

/// What a plugin's entry function returns: a static that lives as long as the library.
///
/// A plugin serves switched connections one of two ways: blocking (`serve`, on a worker
/// thread per connection) or readiness-driven (`start`, `on_ready`, `drop_conn`, on the
/// daemon's event loops). It sets `serve`, or all three of the others (ABI 1.1), never both.
#[repr(C)]
pub struct PluginDescriptor {
    /// Always [`MAGIC`].
    pub magic: [u8; 8],
    /// The minor version the plugin was built against; the host refuses a newer one.
    pub abi_minor: u32,
    /// `size_of::<PluginDescriptor>()` as the plugin knew it.
    pub size: u32,
    /// A short name for logs (`echo`).
    pub name: RawBytes,
    /// Free text for logs: crate version, build profile.
    pub build: RawBytes,
    /// The `Upgrade` tokens served, lower-case.
    pub tokens: *const RawBytes,
    /// How many `tokens`.
    pub tokens_len: usize,
    /// Required. Makes the plugin's shared state (`*state`, non-NULL), once, before any
    /// other call.
    pub init: Option<InitFn>,
    /// Required. Decides on one request; on `DECISION_ACCEPT` it may set `*session`, which
    /// the host hands to exactly one of `serve`, `start` or `drop_session`. For a readiness
    /// plugin it runs on an event loop and must not block.
    pub negotiate: Option<NegotiateFn>,
    /// Runs the new protocol on the connection until it ends, blocking; consumes `session`.
    /// NULL when the plugin is readiness-driven.
    pub serve: Option<ServeFn>,
    /// Optional: frees a session that will not be served (the client left before the
    /// `101`). NULL when sessions own nothing.
    pub drop_session: Option<DropSessionFn>,
    // ---- ABI 1.1 ----
    /// Readiness-driven: after the `101`, turns `session` (consumed) into the connection's
    /// state `*conn`. The host then calls `on_ready` at once with `READABLE | WRITABLE`.
    pub start: Option<StartFn>,
    /// Readiness-driven: the connection may move; read and write without blocking, then say
    /// what to wait for next. Called on the one event-loop thread that owns the connection.
    pub on_ready: Option<OnReadyFn>,
    /// Readiness-driven: frees `conn` when the connection ends, however it ends.
    pub drop_conn: Option<DropConnFn>,
    // ---- ABI 1.6 ----
    /// (1.6) The settings the plugin reads, `settings_len` of them, static data: listed by
    /// `--help` and `--check`. A plugin reads no `SWITCHYARD_*` variable it does not list.
    pub settings: *const RawSetting,
    /// (1.6) How many `settings`.
    pub settings_len: usize,
}

/// Size of the version-1.0 descriptor: the least a host accepts.
pub const DESCRIPTOR_V1_SIZE: usize = offset_of!(PluginDescriptor, start);
/// Size of the version-1.1 descriptor (the same through 1.5).
pub const DESCRIPTOR_V1_1_SIZE: usize = offset_of!(PluginDescriptor, settings);
/// Size of the version-1.6 descriptor.
pub const DESCRIPTOR_V1_6_SIZE: usize = size_of::<PluginDescriptor>();

// The layout is the contract: these fail the build if a field moves (checked on 64-bit targets,
// where the offsets are simple to state).
#[cfg(target_pointer_width = "64")]
const W: usize = size_of::<usize>();
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<RawBytes>() == 2 * W && align_of::<RawBytes>() == W);
    assert!(size_of::<RawHeader>() == 4 * W);
    assert!(offset_of!(PluginDescriptor, magic) == 0);
    assert!(offset_of!(PluginDescriptor, abi_minor) == 8);
    assert!(offset_of!(PluginDescriptor, size) == 12);
    assert!(offset_of!(PluginDescriptor, name) == 16);
    assert!(offset_of!(PluginDescriptor, build) == 16 + 2 * W);
    assert!(offset_of!(PluginDescriptor, tokens) == 16 + 4 * W);
    assert!(offset_of!(PluginDescriptor, init) == 16 + 6 * W);
    assert!(offset_of!(PluginDescriptor, drop_session) == 16 + 9 * W);
    assert!(DESCRIPTOR_V1_SIZE == 16 + 10 * W);
    assert!(offset_of!(PluginDescriptor, start) == 16 + 10 * W);
    assert!(offset_of!(PluginDescriptor, drop_conn) == 16 + 12 * W);
    assert!(DESCRIPTOR_V1_1_SIZE == 16 + 13 * W);
    assert!(offset_of!(PluginDescriptor, settings) == 16 + 13 * W);
    assert!(size_of::<PluginDescriptor>() == 16 + 15 * W);
    assert!(size_of::<RawSetting>() == 6 * W);
    assert!(offset_of!(RawMetric, name) == W);
    assert!(offset_of!(RawMetric, buckets) == 7 * W);
    assert!(size_of::<RawMetric>() == 10 * W);
    assert!(offset_of!(HostApi, ctx) == 8 + 2 * W);
    assert!(offset_of!(HostApi, metric_series) == 8 + 4 * W);
    assert!(offset_of!(HostApi, access_line) == 8 + 5 * W);
    assert!(offset_of!(HostApi, access_line_named) == 8 + 6 * W);
    assert!(size_of::<RawExchange>() == 18 * W + 32);
    assert!(offset_of!(RawRequestNames, sent) == 8 * W);
    assert!(size_of::<RawRequestNames>() == (8 * W + 4).next_multiple_of(W));
    assert!(offset_of!(RawExchange, status) == 8 * W);
    assert!(offset_of!(RawExchange, micros) == 10 * W + 24);
    assert!(offset_of!(RawRequest, protocol) == 10 * W + 8);
    assert!(offset_of!(RawRequest, tls) == 12 * W + 16);
    assert!(offset_of!(RawRequest, tls_version) == 12 * W + 24);
    assert!(size_of::<RawRequest>() == 22 * W + 24);
    assert!(offset_of!(RawConnection, fd) == 8 * W);
    assert!(offset_of!(RawConnection, set_write_timeout) == 9 * W);
    assert!(offset_of!(RawConnection, waker) == 12 * W);
    assert!(size_of::<RawConnection>() == 13 * W);
    assert!(size_of::<RawWaker>() == 4 * W);
    assert!(size_of::<RawWants>() == 16);
    // A NULL entry is `None`: the same bits as a plain function pointer.
    assert!(size_of::<Option<ServeFn>>() == W);
    assert!(offset_of!(HostApi, log) == 8 + W);
};
