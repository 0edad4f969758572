//! Every `unsafe` line of the daemon's side of the plugin ABI: opening libraries, calling
//! plugin functions, and the `extern "C"` callbacks plugins call back into.
//!
//! The rest of the daemon sees only the safe wrappers in [`super`]. Each callback runs its
//! body under `catch_unwind`: a panic must not unwind into plugin code.

use super::{Negotiation, RequestParts, Served};
use protocol_api::abi::*;
use std::ffi::c_void;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Why a file is not a usable plugin. Shown after the file's name.
#[derive(Debug)]
pub enum LoadError {
    Open(String),
    NoEntry,
    OtherMajor(u32),
    NullDescriptor,
    BadMagic,
    TooSmall(u32),
    NewerMinor(u32),
    BadText(&'static str),
    NoTokens,
    Init(String),
    InitPanicked(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Open(e) => write!(f, "cannot be opened as a shared library: {e}"),
            LoadError::NoEntry => write!(f, "not a switchyard plugin: no {ENTRY_SYMBOL} symbol"),
            LoadError::OtherMajor(v) => {
                write!(f, "built for plugin ABI v{v}; this daemon loads v{ABI_MAJOR} (rebuild it against this protocol-api)")
            }
            LoadError::NullDescriptor => write!(f, "{ENTRY_SYMBOL} returned no descriptor"),
            LoadError::BadMagic => write!(f, "descriptor has the wrong magic bytes (not a switchyard plugin, or a corrupt one)"),
            LoadError::TooSmall(size) => write!(f, "descriptor is {size} bytes, smaller than the v1 minimum {DESCRIPTOR_V1_SIZE}"),
            LoadError::NewerMinor(minor) => write!(
                f,
                "built for plugin ABI 1.{minor}, newer than this daemon's 1.{ABI_MINOR} (upgrade the daemon)"
            ),
            LoadError::BadText(what) => write!(f, "descriptor {what} is not valid UTF-8"),
            LoadError::NoTokens => write!(f, "declares no Upgrade tokens"),
            LoadError::Init(e) => write!(f, "init failed: {e}"),
            LoadError::InitPanicked(e) => write!(f, "init panicked: {e}"),
        }
    }
}

/// An opened library and its descriptor, not yet initialised.
pub struct Opened {
    /// Kept open even when the file is then rejected: its entry function has run, and
    /// unloading buys nothing worth the risk.
    library: std::mem::ManuallyDrop<libloading::os::unix::Library>,
    descriptor: &'static PluginDescriptor,
    pub name: String,
    pub build: String,
    pub tokens: Vec<String>,
}

/// A loaded and initialised plugin's functions and state.
pub struct Loaded {
    /// Never closed: a plugin's code may be running on any worker (and in thread-locals'
    /// destructors) until the process exits; `dlclose` under it would crash.
    _library: std::mem::ManuallyDrop<libloading::os::unix::Library>,
    descriptor: &'static PluginDescriptor,
    state: *mut c_void,
}

// SAFETY: `state` is the plugin's `Protocol` value, which the trait requires to be
// `Send + Sync`; the descriptor is immutable static data of a library that is never unloaded.
unsafe impl Send for Loaded {}
// SAFETY: as above.
unsafe impl Sync for Loaded {}

fn text(bytes: RawBytes, what: &'static str) -> Result<String, LoadError> {
    // SAFETY: descriptor fields point at static data of the (still open) library.
    let slice = unsafe { bytes.as_slice() };
    std::str::from_utf8(slice)
        .map(str::to_owned)
        .map_err(|_| LoadError::BadText(what))
}

/// Opens `path` and checks its descriptor, without running any plugin code but the entry.
pub fn open(path: &Path) -> Result<Opened, LoadError> {
    // SAFETY: loading a library runs its initialisers; loading plugins is the operator's
    // explicit request. RTLD_LOCAL keeps its symbols from resolving another plugin's.
    let library = unsafe {
        libloading::os::unix::Library::open(Some(path), libc::RTLD_NOW | libc::RTLD_LOCAL)
    }
    .map_err(|e| LoadError::Open(e.to_string()))?;
    // SAFETY: the symbol's type is fixed by the ABI; a library exporting the name with
    // another type is not a plugin we can defend against.
    let entry = match unsafe { library.get::<EntryFn>(ENTRY_SYMBOL.as_bytes()) } {
        Ok(entry) => entry,
        Err(_) => {
            for major in (1..=9).filter(|&m| m != ABI_MAJOR) {
                let name = format!("switchyard_plugin_v{major}");
                // SAFETY: only looked up, never called.
                if unsafe { library.get::<*const c_void>(name.as_bytes()) }.is_ok() {
                    return Err(LoadError::OtherMajor(major));
                }
            }
            return Err(LoadError::NoEntry);
        }
    };
    // SAFETY: the entry function takes nothing and catches its own panics.
    let pointer = unsafe { entry() };
    if pointer.is_null() {
        return Err(LoadError::NullDescriptor);
    }
    // SAFETY: checked non-null; the magic is read before anything else is trusted, and the
    // first 16 bytes (magic, minor, size) are common to every version.
    let header = unsafe { std::ptr::read(pointer.cast::<[u8; 16]>()) };
    if header[..8] != MAGIC {
        return Err(LoadError::BadMagic);
    }
    let minor = u32::from_ne_bytes(header[8..12].try_into().unwrap());
    let size = u32::from_ne_bytes(header[12..16].try_into().unwrap());
    if (size as usize) < DESCRIPTOR_V1_SIZE {
        return Err(LoadError::TooSmall(size));
    }
    if minor > ABI_MINOR {
        return Err(LoadError::NewerMinor(minor));
    }
    // SAFETY: magic and size say this is a whole v1 descriptor, static in the library, which
    // we never unload.
    let descriptor: &'static PluginDescriptor = unsafe { &*pointer };
    let name = text(descriptor.name, "name")?;
    let build = text(descriptor.build, "build")?;
    let raw_tokens: &[RawBytes] = if descriptor.tokens_len == 0 {
        &[]
    } else {
        // SAFETY: the descriptor promises `tokens_len` entries of static data.
        unsafe { std::slice::from_raw_parts(descriptor.tokens, descriptor.tokens_len) }
    };
    let tokens = raw_tokens
        .iter()
        .map(|t| text(*t, "token"))
        .collect::<Result<Vec<_>, _>>()?;
    if tokens.is_empty() {
        return Err(LoadError::NoTokens);
    }
    Ok(Opened {
        library: std::mem::ManuallyDrop::new(library),
        descriptor,
        name,
        build,
        tokens,
    })
}

/// Runs the plugin's `init`.
pub fn init(opened: Opened) -> Result<Loaded, LoadError> {
    let mut state = std::ptr::null_mut();
    let mut message = String::new();
    let sink = message_sink(&mut message);
    // SAFETY: the ABI's init, with a static host API and a sink that outlives the call.
    let status = unsafe { (opened.descriptor.init)(host_api(), &mut state, &sink) };
    match status {
        STATUS_OK if !state.is_null() => Ok(Loaded {
            _library: opened.library,
            descriptor: opened.descriptor,
            state,
        }),
        STATUS_OK => Err(LoadError::Init("returned no state".into())),
        STATUS_PANIC => Err(LoadError::InitPanicked(message)),
        _ => Err(LoadError::Init(message)),
    }
}

/// Request headers built once in the ABI's shape: every call lends the same array.
pub struct RequestHeaders<'a> {
    raw: Vec<RawHeader>,
    _bytes: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> RequestHeaders<'a> {
    pub fn new(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let raw = pairs
            .map(|(n, v)| RawHeader {
                name: RawBytes::new(n),
                value: RawBytes::new(v),
            })
            .collect();
        RequestHeaders {
            raw,
            _bytes: std::marker::PhantomData,
        }
    }
}

/// The request in the ABI's shape, borrowing from `parts`.
fn raw_request(parts: &RequestParts<'_>) -> RawRequest {
    RawRequest {
        method: RawBytes::new(parts.method),
        target: RawBytes::new(parts.target),
        version_minor: parts.version_minor,
        headers: parts.headers.raw.as_ptr(),
        headers_len: parts.headers.raw.len(),
        peer: RawBytes::new(parts.peer.as_bytes()),
        body: RawBytes::new(parts.body),
        protocol: RawBytes::new(parts.protocol),
    }
}

impl Loaded {
    pub fn negotiate(&self, parts: &RequestParts<'_>) -> Negotiation<'_> {
        let request = raw_request(parts);
        let mut reply = ResponseParts::default();
        let response = ResponseSink {
            ctx: (&mut reply as *mut ResponseParts).cast(),
            set_status: sink_set_status,
            add_header: sink_add_header,
            set_body: sink_set_body,
        };
        let mut message = String::new();
        let error = message_sink(&mut message);
        let mut session = std::ptr::null_mut();
        // SAFETY: the ABI's negotiate: our state, and request/sinks that outlive the call.
        let decision = unsafe {
            (self.descriptor.negotiate)(self.state, &request, &response, &mut session, &error)
        };
        match decision {
            DECISION_ACCEPT => Negotiation::Accept {
                session: Session {
                    loaded: self,
                    pointer: session,
                },
                headers: reply.headers,
            },
            DECISION_REJECT => Negotiation::Reject {
                status: reply.status,
                headers: reply.headers,
                body: reply.body,
            },
            DECISION_DECLINE => Negotiation::Decline,
            STATUS_PANIC => Negotiation::Panicked(message),
            other => Negotiation::Panicked(format!("negotiate returned unknown decision {other}")),
        }
    }

    pub fn serve(
        &self,
        session: Session<'_>,
        parts: &RequestParts<'_>,
        connection: &mut HostConnection<'_>,
    ) -> Served {
        let request = raw_request(parts);
        let raw = RawConnection {
            ctx: (connection as *mut HostConnection<'_>).cast(),
            read: conn_read,
            write: conn_write,
            write_vectored: conn_write_vectored,
            shutdown: conn_shutdown,
            set_read_timeout: conn_set_read_timeout,
            buffered: conn_buffered,
            is_stopping: conn_is_stopping,
            fd: connection.stream.as_raw_fd(),
        };
        let mut message = String::new();
        let error = message_sink(&mut message);
        let pointer = session.take();
        // SAFETY: the ABI's serve: the session from this plugin's negotiate (handed over once),
        // and request/connection/sink that outlive the call.
        let status =
            unsafe { (self.descriptor.serve)(self.state, pointer, &request, &raw, &error) };
        match status {
            STATUS_OK => Served::Done,
            STATUS_PANIC => Served::Panicked(message),
            _ => Served::Failed(message),
        }
    }
}

/// A session a plugin made in `negotiate`: handed to `serve`, or else freed by the plugin's
/// `drop_session` when this is dropped.
pub struct Session<'a> {
    loaded: &'a Loaded,
    pointer: *mut c_void,
}

impl Session<'_> {
    fn take(mut self) -> *mut c_void {
        std::mem::replace(&mut self.pointer, std::ptr::null_mut())
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if !self.pointer.is_null() {
            // SAFETY: the pointer came from this plugin's negotiate and was not served.
            unsafe { (self.loaded.descriptor.drop_session)(self.loaded.state, self.pointer) }
        }
    }
}

#[derive(Default)]
struct ResponseParts {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Runs a callback body, turning a panic into `fallback`: nothing unwinds into a plugin.
fn guarded<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

fn lossy(bytes: RawBytes) -> String {
    // SAFETY: the plugin lends the bytes for the duration of the callback.
    String::from_utf8_lossy(unsafe { bytes.as_slice() }).into_owned()
}

fn message_sink(message: &mut String) -> MessageSink {
    MessageSink {
        ctx: (message as *mut String).cast(),
        set: sink_set_message,
    }
}

unsafe extern "C" fn sink_set_message(ctx: *mut c_void, message: RawBytes) {
    // SAFETY: `ctx` is the `String` passed with this sink, alive for the call.
    guarded((), || unsafe { *ctx.cast::<String>() = lossy(message) })
}

unsafe extern "C" fn sink_set_status(ctx: *mut c_void, status: u16) {
    // SAFETY: `ctx` is the `ResponseParts` passed with this sink, alive for the call.
    guarded((), || unsafe {
        (*ctx.cast::<ResponseParts>()).status = status
    })
}

unsafe extern "C" fn sink_add_header(ctx: *mut c_void, name: RawBytes, value: RawBytes) {
    // SAFETY: as above.
    guarded((), || unsafe {
        (*ctx.cast::<ResponseParts>())
            .headers
            .push((lossy(name), lossy(value)))
    })
}

unsafe extern "C" fn sink_set_body(ctx: *mut c_void, body: RawBytes) {
    // SAFETY: as above; the body bytes are lent for the call.
    guarded((), || unsafe {
        (*ctx.cast::<ResponseParts>()).body = body.as_slice().to_vec()
    })
}

/// The daemon's side of an upgraded connection, behind [`RawConnection`].
pub struct HostConnection<'a> {
    pub stream: &'a TcpStream,
    /// Bytes read past the request before the switch; served first.
    pub read_ahead: Vec<u8>,
    pub read_ahead_pos: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub stopping: &'a AtomicBool,
}

impl HostConnection<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let ahead = &self.read_ahead[self.read_ahead_pos..];
        if !ahead.is_empty() {
            let n = ahead.len().min(buf.len());
            buf[..n].copy_from_slice(&ahead[..n]);
            self.read_ahead_pos += n;
            if self.read_ahead_pos == self.read_ahead.len() {
                self.read_ahead = Vec::new();
                self.read_ahead_pos = 0;
            }
            return Ok(n);
        }
        let n = retry(|| (&mut &*self.stream).read(buf))?;
        self.bytes_in += n as u64;
        Ok(n)
    }
}

fn retry(mut op: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn io_result(result: io::Result<usize>, n: *mut usize) -> i32 {
    match result {
        Ok(count) => {
            // SAFETY: `n` is the plugin's out-pointer for this call.
            unsafe { *n = count };
            0
        }
        Err(e) => errno(&e),
    }
}

/// # Safety
/// `ctx` is the `HostConnection` passed in the `RawConnection`, alive during `serve`.
unsafe fn host_conn<'a>(ctx: *mut c_void) -> &'a mut HostConnection<'a> {
    // SAFETY: the caller's contract.
    unsafe { &mut *ctx.cast::<HostConnection<'a>>() }
}

unsafe extern "C" fn conn_read(ctx: *mut c_void, buf: *mut u8, len: usize, n: *mut usize) -> i32 {
    guarded(libc::EIO, || {
        // SAFETY: `ctx` per the ABI; `buf` is writable for `len` bytes during the call.
        let (conn, buf) = unsafe { (host_conn(ctx), std::slice::from_raw_parts_mut(buf, len)) };
        io_result(conn.read(buf), n)
    })
}

unsafe extern "C" fn conn_write(
    ctx: *mut c_void,
    buf: *const u8,
    len: usize,
    n: *mut usize,
) -> i32 {
    guarded(libc::EIO, || {
        // SAFETY: `ctx` per the ABI; `buf` is readable for `len` bytes during the call.
        let (conn, buf) = unsafe { (host_conn(ctx), RawBytes { ptr: buf, len }.as_slice()) };
        let result = retry(|| (&mut &*conn.stream).write(buf));
        if let Ok(count) = result {
            conn.bytes_out += count as u64;
        }
        io_result(result, n)
    })
}

unsafe extern "C" fn conn_write_vectored(
    ctx: *mut c_void,
    bufs: *const RawBytes,
    count: usize,
    n: *mut usize,
) -> i32 {
    guarded(libc::EIO, || {
        // SAFETY: `ctx` per the ABI; `bufs` holds `count` slices lent for the call.
        let (conn, raw) = unsafe {
            (
                host_conn(ctx),
                RawBytes {
                    ptr: bufs.cast(),
                    len: count,
                },
            )
        };
        let raw: &[RawBytes] = if count == 0 {
            &[]
        } else {
            unsafe { std::slice::from_raw_parts(raw.ptr.cast(), count) }
        };
        // SAFETY: each slice is lent for the call.
        let slices: Vec<IoSlice<'_>> = raw
            .iter()
            .map(|b| IoSlice::new(unsafe { b.as_slice() }))
            .collect();
        let result = retry(|| (&mut &*conn.stream).write_vectored(&slices));
        if let Ok(count) = result {
            conn.bytes_out += count as u64;
        }
        io_result(result, n)
    })
}

unsafe extern "C" fn conn_shutdown(ctx: *mut c_void, how: u32) -> i32 {
    guarded(libc::EIO, || {
        // SAFETY: `ctx` per the ABI.
        let conn = unsafe { host_conn(ctx) };
        let how = match how {
            SHUTDOWN_READ => Shutdown::Read,
            SHUTDOWN_WRITE => Shutdown::Write,
            SHUTDOWN_BOTH => Shutdown::Both,
            _ => return libc::EINVAL,
        };
        match conn.stream.shutdown(how) {
            Ok(()) => 0,
            // Already shut or reset by the peer: the goal (no more traffic) is met.
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => 0,
            Err(e) => errno(&e),
        }
    })
}

unsafe extern "C" fn conn_set_read_timeout(ctx: *mut c_void, millis: u64) -> i32 {
    guarded(libc::EIO, || {
        // SAFETY: `ctx` per the ABI.
        let conn = unsafe { host_conn(ctx) };
        let timeout = (millis > 0).then(|| Duration::from_millis(millis));
        conn.stream
            .set_read_timeout(timeout)
            .map_or_else(|e| errno(&e), |()| 0)
    })
}

unsafe extern "C" fn conn_buffered(ctx: *mut c_void) -> usize {
    // SAFETY: `ctx` per the ABI.
    guarded(0, || unsafe {
        let conn = host_conn(ctx);
        conn.read_ahead.len() - conn.read_ahead_pos
    })
}

unsafe extern "C" fn conn_is_stopping(ctx: *mut c_void) -> u8 {
    // SAFETY: `ctx` per the ABI.
    guarded(0, || {
        u8::from(unsafe { host_conn(ctx) }.stopping.load(Ordering::Acquire))
    })
}

fn level(number: u32) -> log::Level {
    match number {
        0 | 1 => log::Level::Error,
        2 => log::Level::Warn,
        3 => log::Level::Info,
        4 => log::Level::Debug,
        _ => log::Level::Trace,
    }
}

unsafe extern "C" fn host_log_enabled(level_number: u32, target: RawBytes) -> u8 {
    guarded(0, || {
        // SAFETY: lent for the call.
        let target = std::str::from_utf8(unsafe { target.as_slice() }).unwrap_or("plugin");
        let metadata = log::Metadata::builder()
            .level(level(level_number))
            .target(target)
            .build();
        u8::from(log::logger().enabled(&metadata))
    })
}

unsafe extern "C" fn host_log(level_number: u32, target: RawBytes, message: RawBytes) {
    guarded((), || {
        // SAFETY: both lent for the call.
        let (target, message) = unsafe { (target.as_slice(), message.as_slice()) };
        let target = std::str::from_utf8(target).unwrap_or("plugin");
        let message = String::from_utf8_lossy(message);
        log::logger().log(
            &log::Record::builder()
                .level(level(level_number))
                .target(target)
                .args(format_args!("{message}"))
                .build(),
        );
    })
}

/// The host function table every plugin gets; made once, after the logger is set up, and
/// kept for the life of the process.
fn host_api() -> &'static HostApi {
    static API: OnceLock<HostApi> = OnceLock::new();
    API.get_or_init(|| HostApi {
        abi_minor: ABI_MINOR,
        max_log_level: log::max_level() as u32,
        log_enabled: host_log_enabled,
        log: host_log,
    })
}
