//! The plugin side of the ABI: the `extern "C"` shims that
//! [`export_plugin!`](crate::export_plugin) and
//! [`export_event_plugin!`](crate::export_event_plugin) point the descriptor at, and the
//! logger that forwards a plugin's `log` records to the host.
//!
//! Every shim runs all plugin code under `catch_unwind`: the plugin's own calls, and also
//! every `Display` and `Drop` of a value the plugin made (an error, a session, a panic
//! payload), since any of them may panic too.
//!
//! Not public API: reached only through the macros.

use crate::abi::*;
use crate::event::{EventProtocol, Io, Ready};
use crate::{Connection, Decision, Protocol, Request};
use core::ffi::c_void;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The descriptor plus the token table it points into; lives in a `static` of the plugin.
pub struct Descriptor {
    raw: PluginDescriptor,
    _tokens: Box<[RawBytes]>,
    _settings: Box<[RawSetting]>,
    _build: String,
}

// SAFETY: the descriptor is immutable after construction and only points at data it owns
// or at `'static` data.
unsafe impl Send for Descriptor {}
// SAFETY: as above.
unsafe impl Sync for Descriptor {}

impl Descriptor {
    pub fn as_ptr(&self) -> *const PluginDescriptor {
        &self.raw
    }
}

/// What the two kinds of plugin share, so that one set of shims serves both: a
/// [`Protocol`] exported as [`Blocking`], an [`EventProtocol`] as [`Evented`].
pub trait Exported: Sized + Send + Sync + 'static {
    const NAME: &'static str;
    const TOKENS: &'static [&'static str];
    const SETTINGS: &'static [crate::Setting];
    type Session: Send + 'static;
    fn make() -> Result<Self, String>;
    fn decide(&self, request: &Request<'_>) -> Decision<Self::Session>;
    /// Points the descriptor at the serving functions of this kind.
    fn serving(raw: &mut PluginDescriptor);
}

/// A [`Protocol`], served blocking on worker threads.
pub struct Blocking<T>(T);
/// An [`EventProtocol`], served readiness-driven on the event loops.
pub struct Evented<T>(T);

impl<T: Protocol> Exported for Blocking<T> {
    const NAME: &'static str = T::NAME;
    const TOKENS: &'static [&'static str] = T::TOKENS;
    const SETTINGS: &'static [crate::Setting] = T::SETTINGS;
    type Session = T::Session;
    fn make() -> Result<Self, String> {
        T::new().map(Blocking)
    }
    fn decide(&self, request: &Request<'_>) -> Decision<T::Session> {
        self.0.negotiate(request)
    }
    fn serving(raw: &mut PluginDescriptor) {
        raw.serve = Some(serve::<T>);
    }
}

impl<T: EventProtocol> Exported for Evented<T> {
    const NAME: &'static str = T::NAME;
    const TOKENS: &'static [&'static str] = T::TOKENS;
    const SETTINGS: &'static [crate::Setting] = T::SETTINGS;
    type Session = T::Session;
    fn make() -> Result<Self, String> {
        T::new().map(Evented)
    }
    fn decide(&self, request: &Request<'_>) -> Decision<T::Session> {
        self.0.negotiate(request)
    }
    fn serving(raw: &mut PluginDescriptor) {
        raw.start = Some(start::<T>);
        raw.on_ready = Some(on_ready::<T>);
        raw.drop_conn = Some(drop_conn::<T>);
    }
}

/// Builds the descriptor for `W`. Called once, from the entry function; `package` is the
/// plugin crate's name and version.
pub fn describe<W: Exported>(package: &str) -> Descriptor {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let build = format!(
        "{package}, protocol-api {}, {profile}",
        env!("CARGO_PKG_VERSION")
    );
    let tokens: Box<[RawBytes]> = W::TOKENS
        .iter()
        .map(|t| RawBytes::new(t.as_bytes()))
        .collect();
    let settings: Box<[RawSetting]> = W::SETTINGS.iter().map(|s| s.to_raw()).collect();
    let mut raw = PluginDescriptor {
        magic: MAGIC,
        abi_minor: ABI_MINOR,
        size: core::mem::size_of::<PluginDescriptor>() as u32,
        name: RawBytes::new(W::NAME.as_bytes()),
        build: RawBytes::new(build.as_bytes()),
        tokens: tokens.as_ptr(),
        tokens_len: tokens.len(),
        init: Some(init::<W>),
        negotiate: Some(negotiate::<W>),
        serve: None,
        drop_session: Some(drop_session::<W>),
        start: None,
        on_ready: None,
        drop_conn: None,
        settings: settings.as_ptr(),
        settings_len: settings.len(),
    };
    W::serving(&mut raw);
    Descriptor {
        raw,
        _tokens: tokens,
        _settings: settings,
        _build: build,
    }
}

pub use crate::host::host_minor;
use crate::host::note_host_minor;

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "panic with a non-string payload"
    }
}

/// Drops a value whose `Drop` may panic; a second panic's payload is leaked, not dropped.
fn drop_caught<T>(value: T) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
        std::mem::forget(payload);
    }
}

/// # Safety
/// `sink` is null or a live host sink.
unsafe fn tell(sink: *const MessageSink, message: &str) {
    // SAFETY: the caller's contract; the host copies the message during the call.
    if let Some(sink) = unsafe { sink.as_ref() } {
        // SAFETY: a live sink's `set` takes its own `ctx` and bytes valid for the call.
        unsafe { (sink.set)(sink.ctx, RawBytes::new(message.as_bytes())) }
    }
}

/// Runs `body` (which may tell `error` itself); a panic becomes `STATUS_PANIC` with its
/// message in `error`.
///
/// # Safety
/// `error` is null or a live host sink.
unsafe fn guarded(error: *const MessageSink, body: impl FnOnce() -> i32) -> i32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(code) => code,
        Err(payload) => {
            // Copying the message out cannot panic; dropping the payload might.
            // SAFETY: the caller's contract.
            unsafe { tell(error, panic_message(&*payload)) };
            drop_caught(payload);
            STATUS_PANIC
        }
    }
}

/// Tells `error` the text of `e`: `Display` is plugin code and runs under the caller's catch.
///
/// # Safety
/// `error` is null or a live host sink.
unsafe fn tell_error(error: *const MessageSink, e: impl std::fmt::Display) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { tell(error, &e.to_string()) };
    STATUS_ERROR
}

unsafe extern "C" fn init<W: Exported>(
    host: *const HostApi,
    state: *mut *mut c_void,
    error: *const MessageSink,
) -> i32 {
    // SAFETY: `error` comes from the host; every step runs under the catch.
    unsafe {
        guarded(error, || {
            // SAFETY: the host passes a HostApi that lives as long as the process.
            if let Some(host) = host.as_ref() {
                note_host_minor(host.abi_minor);
                install_logger(host);
                crate::host::note_host(host);
            }
            match W::make() {
                Ok(plugin) => {
                    // SAFETY: `state` is a valid out-pointer from the host.
                    *state = Box::into_raw(Box::new(plugin)).cast();
                    STATUS_OK
                }
                Err(message) => tell_error(error, message),
            }
        })
    }
}

unsafe extern "C" fn negotiate<W: Exported>(
    state: *const c_void,
    request: *const RawRequest,
    response: *const ResponseSink,
    session: *mut *mut c_void,
    error: *const MessageSink,
) -> i32 {
    // SAFETY: `state` came from `init::<W>`; the host lends `request`, `response`, `session`
    // and `error` for the call. Dropping the decision's parts (plugin values) happens inside.
    unsafe {
        guarded(error, || {
            let (plugin, request, response) = (
                &*(state as *const W),
                Request::from_raw(&*request),
                &*response,
            );
            let add_headers = |headers: &[(String, String)]| {
                for (name, value) in headers {
                    (response.add_header)(
                        response.ctx,
                        RawBytes::new(name.as_bytes()),
                        RawBytes::new(value.as_bytes()),
                    );
                }
            };
            match plugin.decide(&request) {
                Decision::Accept {
                    session: made,
                    headers,
                } => {
                    add_headers(&headers);
                    // The box goes back to `serve`, `start` or `drop_session`.
                    *session = Box::into_raw(Box::new(made)).cast();
                    DECISION_ACCEPT
                }
                Decision::Reject(rejection) => {
                    add_headers(&rejection.headers);
                    (response.set_status)(response.ctx, rejection.status);
                    (response.set_body)(response.ctx, RawBytes::new(&rejection.body));
                    DECISION_REJECT
                }
                Decision::Decline => DECISION_DECLINE,
                Decision::OnWorker => DECISION_ON_WORKER,
            }
        })
    }
}

unsafe extern "C" fn drop_session<W: Exported>(_state: *const c_void, session: *mut c_void) {
    if session.is_null() {
        return;
    }
    // SAFETY: `session` came from `negotiate::<W>` and is handed back exactly once.
    let session = unsafe { Box::from_raw(session as *mut W::Session) };
    drop_caught(session);
}

unsafe extern "C" fn serve<T: Protocol>(
    state: *const c_void,
    session: *mut c_void,
    request: *const RawRequest,
    connection: *const RawConnection,
    error: *const MessageSink,
) -> i32 {
    // SAFETY: `state` came from `init`, `session` from `negotiate` (handed over once); the
    // host lends `request`, `connection` and `error` for the call.
    unsafe {
        guarded(error, || {
            let plugin = &(*(state as *const Blocking<T>)).0;
            let session = Box::from_raw(session as *mut T::Session);
            let request = Request::from_raw(&*request);
            let mut connection = Connection::from_raw(&*connection);
            match plugin.serve(*session, &request, &mut connection) {
                Ok(()) => STATUS_OK,
                Err(e) => tell_error(error, e),
            }
        })
    }
}

unsafe extern "C" fn start<T: EventProtocol>(
    state: *const c_void,
    session: *mut c_void,
    request: *const RawRequest,
    conn: *mut *mut c_void,
    error: *const MessageSink,
) -> i32 {
    // SAFETY: as in `serve`; `conn` is the host's out-pointer.
    unsafe {
        guarded(error, || {
            let plugin = &(*(state as *const Evented<T>)).0;
            let session = Box::from_raw(session as *mut T::Session);
            let request = Request::from_raw(&*request);
            match plugin.start(*session, &request) {
                Ok(made) => {
                    *conn = Box::into_raw(Box::new(made)).cast();
                    STATUS_OK
                }
                Err(e) => tell_error(error, e),
            }
        })
    }
}

unsafe extern "C" fn on_ready<T: EventProtocol>(
    state: *const c_void,
    conn: *mut c_void,
    connection: *const RawConnection,
    events: u32,
    wants: *mut RawWants,
    error: *const MessageSink,
) -> i32 {
    // SAFETY: `state` came from `init`, `conn` from `start` (owned by this loop thread); the
    // host lends `connection`, `wants` and `error` for the call.
    unsafe {
        guarded(error, || {
            let plugin = &(*(state as *const Evented<T>)).0;
            let conn = &mut *(conn as *mut T::Conn);
            let mut io = Io::from_raw(&*connection);
            match plugin.on_ready(conn, &mut io, Ready::from_bits(events)) {
                Ok(next) => {
                    *wants = next.to_raw();
                    STATUS_OK
                }
                Err(e) => tell_error(error, e),
            }
        })
    }
}

unsafe extern "C" fn drop_conn<T: EventProtocol>(_state: *const c_void, conn: *mut c_void) {
    if conn.is_null() {
        return;
    }
    // SAFETY: `conn` came from `start::<T>` and is handed back exactly once.
    let conn = unsafe { Box::from_raw(conn as *mut T::Conn) };
    drop_caught(conn);
}

/// Forwards this library's `log` records (a cdylib has its own copy of the `log` crate) to
/// the host's logger.
struct HostLogger(&'static HostApi);

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let target = RawBytes::new(metadata.target().as_bytes());
        let level = crate::log_levels::to_abi(metadata.level());
        // SAFETY: the host's function; `target` is borrowed for the call.
        unsafe { (self.0.log_enabled)(level, target) != 0 }
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let formatted;
        let message = match record.args().as_str() {
            Some(text) => text,
            None => {
                formatted = record.args().to_string();
                &formatted
            }
        };
        let target = RawBytes::new(record.target().as_bytes());
        let level = crate::log_levels::to_abi(record.level());
        // SAFETY: the host's function; both slices are borrowed for the call.
        unsafe { (self.0.log)(level, target, RawBytes::new(message.as_bytes())) }
    }

    fn flush(&self) {}
}

fn install_logger(host: &HostApi) {
    // SAFETY: the host's HostApi is a static of the daemon that outlives every plugin call.
    let host: &'static HostApi = unsafe { &*(host as *const HostApi) };
    if log::set_logger(Box::leak(Box::new(HostLogger(host)))).is_ok() {
        log::set_max_level(crate::log_levels::filter_from_abi(host.max_log_level));
    }
}

/// Runs the entry function's body: builds the descriptor once, never lets a panic out.
pub fn entry<W: Exported>(
    slot: &'static std::sync::OnceLock<Descriptor>,
    package: &str,
) -> *const PluginDescriptor {
    match catch_unwind(AssertUnwindSafe(|| {
        slot.get_or_init(|| describe::<W>(package)).as_ptr()
    })) {
        Ok(pointer) => pointer,
        Err(payload) => {
            drop_caught(payload);
            core::ptr::null()
        }
    }
}
