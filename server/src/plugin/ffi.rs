//! Every `unsafe` line of the daemon's side of the plugin ABI: opening libraries, calling
//! plugin functions, and the `extern "C"` callbacks of the sinks and the log (a
//! connection's callbacks are [`protocol_api::hosting`]'s, shared with the test host).
//!
//! The rest of the daemon sees only the safe wrappers in [`super`]. Each callback runs its
//! body under `catch_unwind`: a panic must not unwind into plugin code.

use super::{Failure, Negotiation, RequestParts};
use protocol_api::abi::*;
use protocol_api::hosting::{guarded, lent, raw_connection, HostConnection};
use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::path::Path;

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
    /// A token that is not an HTTP token, or that another plugin serves.
    BadToken(String),
    /// A required function pointer is NULL.
    Missing(&'static str),
    /// Neither a complete blocking nor a complete readiness set of functions.
    NoWayToServe,
    /// Both `serve` and the readiness functions.
    BothWaysToServe,
    Init(String),
    InitPanicked(String),
    /// `init` returned a code the ABI does not define.
    InitBadStatus(i32, String),
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
            LoadError::TooSmall(size) => write!(f, "descriptor is {size} bytes, smaller than its ABI version needs"),
            LoadError::NewerMinor(minor) => write!(
                f,
                "built for plugin ABI 1.{minor}, newer than this daemon's 1.{ABI_MINOR} (upgrade the daemon)"
            ),
            LoadError::BadText(what) => write!(f, "descriptor {what} is not valid UTF-8"),
            LoadError::NoTokens => write!(f, "declares no Upgrade tokens"),
            LoadError::BadToken(why) => f.write_str(why),
            LoadError::Missing(what) => write!(f, "descriptor has no `{what}` function (NULL)"),
            LoadError::NoWayToServe => write!(f, "descriptor has neither `serve` nor all of `start`, `on_ready` and `drop_conn`"),
            LoadError::BothWaysToServe => write!(f, "descriptor has both `serve` and the readiness functions; set one way to serve"),
            LoadError::Init(e) => write!(f, "init failed: {e}"),
            LoadError::InitPanicked(e) => write!(f, "init panicked: {e}"),
            LoadError::InitBadStatus(code, e) => {
                write!(f, "init returned {code}, not a status code ({e})")
            }
        }
    }
}

/// How a plugin serves switched connections.
#[derive(Clone, Copy)]
enum Serving {
    Blocking(ServeFn),
    Readiness {
        start: StartFn,
        on_ready: OnReadyFn,
        drop_conn: DropConnFn,
    },
}

/// An opened library and its descriptor, not yet initialised.
pub struct Opened {
    /// Kept open even when the file is then rejected: its entry function has run, and
    /// unloading buys nothing worth the risk.
    library: std::mem::ManuallyDrop<libloading::os::unix::Library>,
    /// The plugin's descriptor, copied: as many bytes as it says it has, the rest zero
    /// (NULL), so fields of a newer minor read as absent in an older plugin.
    descriptor: PluginDescriptor,
    init: InitFn,
    negotiate: NegotiateFn,
    serving: Serving,
    pub name: String,
    pub build: String,
    pub tokens: Vec<String>,
    /// The settings it reads (1.6), as it declares them.
    pub settings: Vec<super::Declared>,
}

/// A loaded and initialised plugin's functions and state.
pub struct Loaded {
    /// Never closed: a plugin's code may be running on any thread (and in thread-locals'
    /// destructors) until the process exits; `dlclose` under it would crash.
    _library: std::mem::ManuallyDrop<libloading::os::unix::Library>,
    minor: u32,
    negotiate: NegotiateFn,
    drop_session: Option<DropSessionFn>,
    serving: Serving,
    state: *mut c_void,
}

// SAFETY: `state` is the plugin's shared value, which the ABI requires to be usable from
// every thread at once (the safe layer's traits are `Send + Sync`); the function pointers
// point into a library that is never unloaded.
unsafe impl Send for Loaded {}
// SAFETY: as above.
unsafe impl Sync for Loaded {}

fn text(bytes: RawBytes, what: &'static str) -> Result<String, LoadError> {
    if bytes.len > 0 && bytes.ptr.is_null() {
        return Err(LoadError::BadText(what));
    }
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
    .map_err(|e| {
        // The loader's own words (libloading's error says only "dlopen failed"), without
        // the name it was opened under (the caller names the file).
        let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
        let shown = format!("{}: ", path.display());
        LoadError::Open(why.strip_prefix(&shown).unwrap_or(&why).to_string())
    })?;
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
    let header = unsafe { std::ptr::read_unaligned(pointer.cast::<[u8; 16]>()) };
    if header[..8] != MAGIC {
        return Err(LoadError::BadMagic);
    }
    let minor = u32::from_ne_bytes(header[8..12].try_into().unwrap());
    let size = u32::from_ne_bytes(header[12..16].try_into().unwrap());
    if minor > ABI_MINOR {
        return Err(LoadError::NewerMinor(minor));
    }
    let needed = match minor {
        0 => DESCRIPTOR_V1_SIZE,
        1..=5 => DESCRIPTOR_V1_1_SIZE,
        _ => DESCRIPTOR_V1_6_SIZE,
    };
    if (size as usize) < needed {
        return Err(LoadError::TooSmall(size));
    }
    let mut copy = MaybeUninit::<PluginDescriptor>::zeroed();
    // SAFETY: every field of the descriptor is an integer, a raw pointer or an
    // `Option<extern fn>`, for which all-zero bits are valid (0, NULL, None). The plugin
    // vouched for `size >= needed` bytes at `pointer`; we copy exactly the fields its minor
    // version defines (`needed` bytes), so a 1.0 plugin's later fields stay NULL.
    let descriptor = unsafe {
        std::ptr::copy_nonoverlapping(pointer.cast::<u8>(), copy.as_mut_ptr().cast::<u8>(), needed);
        copy.assume_init()
    };
    let name = text(descriptor.name, "name")?;
    let build = text(descriptor.build, "build")?;
    let raw_tokens: &[RawBytes] = if descriptor.tokens_len == 0 || descriptor.tokens.is_null() {
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
    let raw_settings: &[RawSetting] =
        if descriptor.settings_len == 0 || descriptor.settings.is_null() {
            &[]
        } else {
            // SAFETY: the descriptor (1.6) promises `settings_len` entries of static data.
            unsafe { std::slice::from_raw_parts(descriptor.settings, descriptor.settings_len) }
        };
    let settings = raw_settings
        .iter()
        .map(|s| {
            Ok(super::Declared {
                name: text(s.name, "setting name")?,
                default: text(s.default, "setting default")?,
                help: text(s.help, "setting help")?,
            })
        })
        .collect::<Result<Vec<_>, LoadError>>()?;
    let init = descriptor.init.ok_or(LoadError::Missing("init"))?;
    let negotiate = descriptor
        .negotiate
        .ok_or(LoadError::Missing("negotiate"))?;
    let readiness = (descriptor.start, descriptor.on_ready, descriptor.drop_conn);
    let serving = match (descriptor.serve, readiness) {
        (Some(_), (Some(_), _, _) | (_, Some(_), _) | (_, _, Some(_))) => {
            return Err(LoadError::BothWaysToServe)
        }
        (Some(serve), _) => Serving::Blocking(serve),
        (None, (Some(start), Some(on_ready), Some(drop_conn))) => Serving::Readiness {
            start,
            on_ready,
            drop_conn,
        },
        (None, _) => return Err(LoadError::NoWayToServe),
    };
    Ok(Opened {
        library: std::mem::ManuallyDrop::new(library),
        descriptor,
        init,
        negotiate,
        serving,
        name,
        build,
        tokens,
        settings,
    })
}

/// Runs the plugin's `init`.
pub fn init(opened: Opened) -> Result<Loaded, LoadError> {
    let mut state = std::ptr::null_mut();
    let mut message = String::new();
    let sink = message_sink(&mut message);
    // SAFETY: the ABI's init, with a static host API and a sink that outlives the call.
    let status = unsafe { (opened.init)(host_api(&opened.name), &mut state, &sink) };
    match status {
        STATUS_OK if !state.is_null() => Ok(Loaded {
            _library: opened.library,
            minor: opened.descriptor.abi_minor,
            negotiate: opened.negotiate,
            drop_session: opened.descriptor.drop_session,
            serving: opened.serving,
            state,
        }),
        STATUS_OK => Err(LoadError::Init("returned no state".into())),
        STATUS_PANIC => Err(LoadError::InitPanicked(message)),
        STATUS_ERROR => Err(LoadError::Init(message)),
        other => Err(LoadError::InitBadStatus(other, message)),
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
        arrival: parts.arrival,
        may_block: u32::from(parts.may_block),
        tls: u32::from(parts.tls.is_some()),
        tls_version: RawBytes::new(parts.tls.map_or("", |t| t.summary.version).as_bytes()),
        tls_cipher: RawBytes::new(parts.tls.map_or("", |t| t.summary.cipher).as_bytes()),
        tls_alpn: RawBytes::new(match parts.tls.map(|t| t.summary.alpn) {
            Some("-") | None => &[],
            Some(alpn) => alpn.as_bytes(),
        }),
        tls_server_name: RawBytes::new(
            parts
                .tls
                .and_then(|t| t.server_name.as_deref())
                .unwrap_or("")
                .as_bytes(),
        ),
        tls_client_subject: RawBytes::new(
            parts
                .tls
                .and_then(|t| t.client_subject.as_deref())
                .unwrap_or("")
                .as_bytes(),
        ),
    }
}

/// The outcome of a status code from `serve`, `start` or `on_ready`.
fn failure(status: i32, message: String, call: &str) -> Failure {
    match status {
        STATUS_PANIC => Failure::Panicked(message),
        STATUS_ERROR => Failure::Error(message),
        other => Failure::Error(format!("{call} returned {other}, not a status code")),
    }
}

impl Loaded {
    pub fn is_readiness(&self) -> bool {
        matches!(self.serving, Serving::Readiness { .. })
    }

    /// The minor ABI version the plugin was built against.
    pub fn abi_minor(&self) -> u32 {
        self.minor
    }

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
        let mut pointer = std::ptr::null_mut();
        // SAFETY: the ABI's negotiate: our state, and request/sinks that outlive the call.
        let decision =
            unsafe { (self.negotiate)(self.state, &request, &response, &mut pointer, &error) };
        let session = Negotiated {
            loaded: self,
            pointer,
        };
        let (accept, reject, decline) = if self.minor == 0 {
            use protocol_api::abi::v1_0::*;
            (DECISION_ACCEPT, DECISION_REJECT, DECISION_DECLINE)
        } else {
            (DECISION_ACCEPT, DECISION_REJECT, DECISION_DECLINE)
        };
        match decision {
            d if d == accept => Negotiation::Accept {
                session,
                headers: reply.headers,
            },
            d if d == reject => Negotiation::Reject {
                status: reply.status,
                headers: reply.headers,
                body: reply.body,
            },
            d if d == decline => Negotiation::Decline,
            DECISION_ON_WORKER if self.minor >= 2 => Negotiation::OnWorker,
            STATUS_PANIC => Negotiation::Failed(Failure::Panicked(message)),
            other => Negotiation::Failed(Failure::Error(format!(
                "negotiate returned {other}, not a decision"
            ))),
        }
    }

    /// Runs a blocking plugin's `serve` on `connection` until it returns.
    pub fn serve<C: HostConnection>(
        &self,
        session: Negotiated<'_>,
        parts: &RequestParts<'_>,
        connection: &mut C,
        fd: RawFd,
    ) -> Result<(), Failure> {
        let Serving::Blocking(serve) = self.serving else {
            return Err(Failure::Error("not a blocking plugin".into()));
        };
        let request = raw_request(parts);
        let raw = raw_connection(connection, fd);
        let mut message = String::new();
        let error = message_sink(&mut message);
        // SAFETY: the ABI's serve: the session from this plugin's negotiate (handed over
        // once), and request/connection/sink that outlive the call.
        let status = unsafe { serve(self.state, session.take(), &request, &raw, &error) };
        match status {
            STATUS_OK => Ok(()),
            other => Err(failure(other, message, "serve")),
        }
    }

    /// Turns a readiness plugin's session into its connection state.
    pub fn start(
        &self,
        session: Negotiated<'_>,
        parts: &RequestParts<'_>,
    ) -> Result<Handler<'_>, Failure> {
        let Serving::Readiness { start, .. } = self.serving else {
            return Err(Failure::Error("not a readiness plugin".into()));
        };
        let request = raw_request(parts);
        let mut message = String::new();
        let error = message_sink(&mut message);
        let mut pointer = std::ptr::null_mut();
        // SAFETY: the ABI's start: the session (handed over once), request and sink that
        // outlive the call, and our out-pointer.
        let status = unsafe { start(self.state, session.take(), &request, &mut pointer, &error) };
        // Whatever the status, a state it made is ours to hand back to `drop_conn`.
        let handler = Handler {
            loaded: self,
            pointer,
        };
        match status {
            STATUS_OK => Ok(handler),
            other => Err(failure(other, message, "start")),
        }
    }
}

/// A session a plugin made in `negotiate`: handed to `serve` or `start`, or else freed by
/// the plugin's `drop_session` when this is dropped.
pub struct Negotiated<'a> {
    loaded: &'a Loaded,
    pointer: *mut c_void,
}

// SAFETY: sessions are `Send` by the ABI's contract (the safe layer requires it): made on one
// thread, served on another.
unsafe impl Send for Negotiated<'_> {}

impl Negotiated<'_> {
    fn take(mut self) -> *mut c_void {
        std::mem::replace(&mut self.pointer, std::ptr::null_mut())
    }
}

impl Drop for Negotiated<'_> {
    fn drop(&mut self) {
        if let (false, Some(drop_session)) = (self.pointer.is_null(), self.loaded.drop_session) {
            // SAFETY: the pointer came from this plugin's negotiate and was not handed on.
            unsafe { drop_session(self.loaded.state, self.pointer) }
        }
    }
}

/// A readiness connection's state in the plugin, owned by one event loop; dropping it calls
/// the plugin's `drop_conn`.
pub struct Handler<'a> {
    loaded: &'a Loaded,
    pointer: *mut c_void,
}

impl Handler<'_> {
    /// Where the plugin's state for this connection starts (for [`crate::sys::prefetch`]).
    pub fn state_address(&self) -> *const u8 {
        self.pointer.cast()
    }

    /// Calls `on_ready` with the `READY_*` bits in `events`.
    pub fn on_ready<C: HostConnection>(
        &mut self,
        connection: &mut C,
        fd: RawFd,
        events: u32,
    ) -> Result<RawWants, Failure> {
        let Serving::Readiness { on_ready, .. } = self.loaded.serving else {
            return Err(Failure::Error("not a readiness plugin".into()));
        };
        let raw = raw_connection(connection, fd);
        let mut wants = RawWants::default();
        let mut message = String::new();
        let error = message_sink(&mut message);
        // SAFETY: the ABI's on_ready: the state from this plugin's start, on the loop thread
        // that owns it, with a connection, out-value and sink that outlive the call.
        let status = unsafe {
            on_ready(
                self.loaded.state,
                self.pointer,
                &raw,
                events,
                &mut wants,
                &error,
            )
        };
        match status {
            STATUS_OK => Ok(wants),
            other => Err(failure(other, message, "on_ready")),
        }
    }
}

impl Drop for Handler<'_> {
    fn drop(&mut self) {
        if let (false, Serving::Readiness { drop_conn, .. }) =
            (self.pointer.is_null(), self.loaded.serving)
        {
            // SAFETY: the pointer came from this plugin's start and is freed once, on the
            // thread that owns it.
            unsafe { drop_conn(self.loaded.state, self.pointer) }
        }
    }
}

#[derive(Default)]
struct ResponseParts {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn message_sink(message: &mut String) -> MessageSink {
    MessageSink {
        ctx: (message as *mut String).cast(),
        set: sink_set_message,
    }
}

unsafe extern "C" fn sink_set_message(ctx: *mut c_void, message: RawBytes) {
    // SAFETY: `ctx` is the `String` passed with this sink, alive for the call.
    guarded((), || unsafe {
        *ctx.cast::<String>() = String::from_utf8_lossy(lent(message)).into_owned()
    })
}

unsafe extern "C" fn sink_set_status(ctx: *mut c_void, status: u16) {
    // SAFETY: `ctx` is the `ResponseParts` passed with this sink, alive for the call.
    guarded((), || unsafe {
        (*ctx.cast::<ResponseParts>()).status = status
    })
}

unsafe extern "C" fn sink_add_header(ctx: *mut c_void, name: RawBytes, value: RawBytes) {
    // SAFETY: as above; both are lent for the call.
    guarded((), || unsafe {
        (*ctx.cast::<ResponseParts>()).headers.push((
            String::from_utf8_lossy(lent(name)).into_owned(),
            String::from_utf8_lossy(lent(value)).into_owned(),
        ))
    })
}

unsafe extern "C" fn sink_set_body(ctx: *mut c_void, body: RawBytes) {
    // SAFETY: as above; the body bytes are lent for the call.
    guarded((), || unsafe {
        (*ctx.cast::<ResponseParts>()).body = lent(body).to_vec()
    })
}

unsafe extern "C" fn host_log_enabled(level: u32, target: RawBytes) -> u8 {
    guarded(0, || {
        let Some(level) = protocol_api::log_levels::from_abi(level) else {
            return 0;
        };
        // SAFETY: lent for the call.
        let target = std::str::from_utf8(unsafe { lent(target) }).unwrap_or("plugin");
        let metadata = log::Metadata::builder().level(level).target(target).build();
        u8::from(log::logger().enabled(&metadata))
    })
}

unsafe extern "C" fn host_log(level: u32, target: RawBytes, message: RawBytes) {
    guarded((), || {
        let Some(level) = protocol_api::log_levels::from_abi(level) else {
            return; // "off" is not a level a record can have
        };
        // SAFETY: both lent for the call.
        let (target, message) = unsafe { (lent(target), lent(message)) };
        let target = std::str::from_utf8(target).unwrap_or("plugin");
        let message = String::from_utf8_lossy(message);
        log::logger().log(
            &log::Record::builder()
                .level(level)
                .target(target)
                .args(format_args!("{message}"))
                .build(),
        );
    })
}

unsafe extern "C" fn host_access_line(exchange: *const RawExchange) {
    // SAFETY: as the caller's, with no named fields.
    unsafe { access_line(exchange, None) }
}

unsafe extern "C" fn host_access_line_named(
    exchange: *const RawExchange,
    names: *const RawRequestNames,
) {
    // SAFETY: NULL or the plugin's names, lent for the call (1.9).
    let names = unsafe { names.as_ref() };
    // SAFETY: as the caller's.
    unsafe { access_line(exchange, names) }
}

/// An exchange's access line (1.8), with its request's named fields where the plugin gave
/// them (1.9): read only where their bits are set, as a plugin may leave the others unset.
///
/// # Safety
/// `exchange`: NULL or the plugin's, lent for the call, as `names` and what both point at.
unsafe fn access_line(exchange: *const RawExchange, names: Option<&RawRequestNames>) {
    guarded((), || {
        if !crate::access::enabled() {
            return; // nothing decoded for a line nobody writes
        }
        // SAFETY: NULL or the plugin's exchange, lent for the call.
        let Some(raw) = (unsafe { exchange.as_ref() }) else {
            return;
        };
        // SAFETY: every text lent for the call, which these do not outlive.
        let text = |bytes: RawBytes| String::from_utf8_lossy(unsafe { lent(bytes) });
        let (peer, method, target) = (text(raw.peer), text(raw.method), text(raw.target));
        let (version, protocol, reason) = (text(raw.version), text(raw.protocol), text(raw.reason));
        let (tls_version, cipher, alpn) = (
            text(raw.tls_version),
            text(raw.tls_cipher),
            text(raw.tls_alpn),
        );
        let named = |bit: u32, field: fn(&RawRequestNames) -> RawBytes| {
            let names = names.filter(|names| names.sent & bit != 0)?;
            Some(text(field(names)))
        };
        let host = named(NAMED_HOST, |n| n.host);
        let origin = named(NAMED_ORIGIN, |n| n.origin);
        let referer = named(NAMED_REFERER, |n| n.referer);
        let user_agent = named(NAMED_USER_AGENT, |n| n.user_agent);
        crate::access::log_plugins(&protocol_api::access::Exchange {
            peer: &peer,
            method: &method,
            target: &target,
            version: &version,
            status: u16::try_from(raw.status).ok().filter(|&s| s != 0),
            protocol: &protocol,
            bytes_in: raw.bytes_in,
            bytes_out: raw.bytes_out,
            elapsed: std::time::Duration::from_micros(raw.micros),
            reason: (!reason.is_empty()).then_some(&*reason),
            tls: (!tls_version.is_empty()).then_some(protocol_api::Tls {
                version: &tls_version,
                cipher: &cipher,
                alpn: (!alpn.is_empty()).then_some(&*alpn),
                server_name: None,
                client_subject: None,
            }),
            named: protocol_api::access::Named {
                host: host.as_deref(),
                origin: origin.as_deref(),
                referer: referer.as_deref(),
                user_agent: user_agent.as_deref(),
            },
        });
    })
}

/// What the metric functions know of the plugin calling them: its name, which its
/// families belong to (see [`super::metrics`]).
struct PluginScope {
    name: String,
}

unsafe extern "C" fn host_metric_declare(
    ctx: *mut c_void,
    metric: *const RawMetric,
    id: *mut u32,
    error: *const MessageSink,
) -> i32 {
    guarded(STATUS_ERROR, || {
        if ctx.is_null() || metric.is_null() || id.is_null() {
            return STATUS_ERROR;
        }
        // SAFETY: `ctx` is the `PluginScope` leaked with this plugin's `HostApi` (checked
        // non-NULL); the plugin lends `metric` and what it points at for the call, and `id`
        // and `error` are its own, live for the call.
        let (scope, metric) = unsafe { (&*ctx.cast::<PluginScope>(), &*metric) };
        if metric.name.len > 256 || metric.help.len > 4096 {
            return STATUS_ERROR;
        }
        let texts = |items: *const RawBytes, len: usize| -> Vec<String> {
            if items.is_null() || len > 64 {
                return Vec::new();
            }
            // SAFETY: the plugin lends `len` entries for the call.
            let items = unsafe { std::slice::from_raw_parts(items, len) };
            // SAFETY: each lent for the call.
            items
                .iter()
                .map(|b| String::from_utf8_lossy(unsafe { lent(*b) }).into_owned())
                .collect()
        };
        let bounds = match (metric.buckets.is_null(), metric.buckets_len) {
            (false, len @ 1..=64) if metric.kind == METRIC_HISTOGRAM => {
                // SAFETY: the plugin lends `buckets_len` bounds for the call.
                unsafe { std::slice::from_raw_parts(metric.buckets, len) }.to_vec()
            }
            _ => Vec::new(),
        };
        let labels = texts(metric.labels, metric.labels_len);
        // SAFETY: lent for the call.
        let (name, help) = unsafe { (lent(metric.name), lent(metric.help)) };
        let declared = super::metrics::Declaration {
            kind: metric.kind,
            name: String::from_utf8_lossy(name).into_owned(),
            help: String::from_utf8_lossy(help).into_owned(),
            labels,
            bounds,
            scale: metric.scale,
        };
        let wanted = metric.labels_len;
        let result = match declared.labels.len() == wanted {
            true => super::metrics::declare(&scope.name, declared),
            false => Err(format!("metric {}: more than 64 labels", declared.name)),
        };
        match result {
            Ok(family) => {
                // SAFETY: the plugin's out-pointer, live for the call.
                unsafe { *id = family };
                STATUS_OK
            }
            Err(why) => {
                // SAFETY: NULL or the plugin's sink, live for the call.
                if let Some(error) = unsafe { error.as_ref() } {
                    // SAFETY: the plugin's sink, live for the call; it copies.
                    unsafe { (error.set)(error.ctx, RawBytes::new(why.as_bytes())) };
                }
                STATUS_ERROR
            }
        }
    })
}

unsafe extern "C" fn host_metric_series(
    ctx: *mut c_void,
    id: u32,
    values: *const RawBytes,
    values_len: usize,
) -> *mut u64 {
    guarded(std::ptr::null_mut(), || {
        if ctx.is_null() || values_len > 64 || (values.is_null() && values_len > 0) {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `host_metric_declare`; `values_len` values lent for the call.
        let (scope, values) = unsafe {
            let values = match values_len {
                0 => &[][..],
                n => std::slice::from_raw_parts(values, n),
            };
            (&*ctx.cast::<PluginScope>(), values)
        };
        // SAFETY: each lent for the call.
        let values = values
            .iter()
            .map(|v| String::from_utf8_lossy(unsafe { lent(*v) }).into_owned())
            .collect();
        match super::metrics::series(&scope.name, id, values) {
            Some(cells) => cells.as_ptr().cast::<u64>().cast_mut(),
            None => std::ptr::null_mut(),
        }
    })
}

/// The host function table for the plugin `name`: its own (its `ctx` names it), made
/// when it loads, after the logger is set up, and kept for the life of the process (as
/// the plugin is).
fn host_api(name: &str) -> &'static HostApi {
    let scope: &'static mut PluginScope = Box::leak(Box::new(PluginScope {
        name: name.to_string(),
    }));
    Box::leak(Box::new(HostApi {
        abi_minor: ABI_MINOR,
        max_log_level: protocol_api::log_levels::filter_to_abi(log::max_level()),
        log_enabled: host_log_enabled,
        log: host_log,
        ctx: (scope as *mut PluginScope).cast(),
        metric_declare: Some(host_metric_declare),
        metric_series: Some(host_metric_series),
        access_line: Some(host_access_line),
        access_line_named: Some(host_access_line_named),
    }))
}
