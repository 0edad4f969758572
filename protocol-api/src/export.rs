//! The plugin side of the ABI: the `extern "C"` shims that [`export_plugin!`](crate::export_plugin)
//! points the descriptor at, and the logger that forwards a plugin's `log` records to the host.
//!
//! Not public API: reached only through the macro.

use crate::abi::*;
use crate::{Connection, Decision, Protocol, Request};
use core::ffi::c_void;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The descriptor plus the token table it points into; lives in a `static` of the plugin.
pub struct Descriptor {
    raw: PluginDescriptor,
    _tokens: Box<[RawBytes]>,
    _build: String,
}

// SAFETY: the descriptor is immutable after construction and only points at `'static` data.
unsafe impl Send for Descriptor {}
// SAFETY: as above.
unsafe impl Sync for Descriptor {}

impl Descriptor {
    pub fn as_ptr(&self) -> *const PluginDescriptor {
        &self.raw
    }
}

/// Builds the descriptor for `T`. Called once, from the entry function; `package` is the
/// plugin crate's name and version.
pub fn describe<T: Protocol>(package: &str) -> Descriptor {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let build = format!(
        "{package}, protocol-api {}, {profile}",
        env!("CARGO_PKG_VERSION")
    );
    let tokens: Box<[RawBytes]> = T::TOKENS
        .iter()
        .map(|t| RawBytes::new(t.as_bytes()))
        .collect();
    Descriptor {
        raw: PluginDescriptor {
            magic: MAGIC,
            abi_minor: ABI_MINOR,
            size: core::mem::size_of::<PluginDescriptor>() as u32,
            name: RawBytes::new(T::NAME.as_bytes()),
            build: RawBytes::new(build.as_bytes()),
            tokens: tokens.as_ptr(),
            tokens_len: tokens.len(),
            init: init::<T>,
            negotiate: negotiate::<T>,
            serve: serve::<T>,
            drop_session: drop_session::<T>,
        },
        _tokens: tokens,
        _build: build,
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "panic with a non-string payload"
    }
}

/// # Safety
/// `sink` is null or a live host sink.
unsafe fn tell(sink: *const MessageSink, message: &str) {
    // SAFETY: the caller's contract; the host copies the message during the call.
    if let Some(sink) = unsafe { sink.as_ref() } {
        unsafe { (sink.set)(sink.ctx, RawBytes::new(message.as_bytes())) }
    }
}

unsafe extern "C" fn init<T: Protocol>(
    host: *const HostApi,
    state: *mut *mut c_void,
    error: *const MessageSink,
) -> i32 {
    let made = catch_unwind(|| {
        // SAFETY: the host passes a pointer to a HostApi that lives as long as the process.
        if let Some(host) = unsafe { host.as_ref() } {
            install_logger(host);
        }
        T::new()
    });
    match made {
        Ok(Ok(plugin)) => {
            // SAFETY: `state` is a valid out-pointer from the host.
            unsafe { *state = Box::into_raw(Box::new(plugin)).cast() };
            STATUS_OK
        }
        // SAFETY (both arms): `error` comes from the host.
        Ok(Err(message)) => unsafe {
            tell(error, &message);
            STATUS_ERROR
        },
        Err(payload) => unsafe {
            tell(error, panic_message(&*payload));
            STATUS_PANIC
        },
    }
}

unsafe extern "C" fn negotiate<T: Protocol>(
    state: *const c_void,
    request: *const RawRequest,
    response: *const ResponseSink,
    session: *mut *mut c_void,
    error: *const MessageSink,
) -> i32 {
    // SAFETY: `state` came from `init::<T>`; the host lends `request` and `response` for the call.
    let (plugin, request, response) = unsafe {
        (
            &*(state as *const T),
            Request::from_raw(&*request),
            &*response,
        )
    };
    let decision = match catch_unwind(AssertUnwindSafe(|| plugin.negotiate(&request))) {
        Ok(decision) => decision,
        Err(payload) => {
            // SAFETY: `error` comes from the host.
            unsafe { tell(error, panic_message(&*payload)) };
            return STATUS_PANIC;
        }
    };
    // SAFETY: the sink's functions copy what they are given during the call.
    let add_headers = |headers: &[(String, String)]| unsafe {
        for (name, value) in headers {
            (response.add_header)(
                response.ctx,
                RawBytes::new(name.as_bytes()),
                RawBytes::new(value.as_bytes()),
            );
        }
    };
    match decision {
        Decision::Accept {
            session: made,
            headers,
        } => {
            add_headers(&headers);
            // SAFETY: `session` is a valid out-pointer; the box goes back to `serve` or `drop_session`.
            unsafe { *session = Box::into_raw(Box::new(made)).cast() };
            DECISION_ACCEPT
        }
        Decision::Reject(rejection) => {
            add_headers(&rejection.headers);
            // SAFETY: as above.
            unsafe {
                (response.set_status)(response.ctx, rejection.status);
                (response.set_body)(response.ctx, RawBytes::new(&rejection.body));
            }
            DECISION_REJECT
        }
        Decision::Decline => DECISION_DECLINE,
    }
}

unsafe extern "C" fn serve<T: Protocol>(
    state: *const c_void,
    session: *mut c_void,
    request: *const RawRequest,
    connection: *const RawConnection,
    error: *const MessageSink,
) -> i32 {
    // SAFETY: `state` came from `init::<T>`, `session` from `negotiate::<T>` (handed over once);
    // the host lends `request` and `connection` for the call.
    let (plugin, session, request, mut connection) = unsafe {
        (
            &*(state as *const T),
            Box::from_raw(session as *mut T::Session),
            Request::from_raw(&*request),
            Connection::from_raw(&*connection),
        )
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        plugin.serve(*session, &request, &mut connection)
    }));
    // SAFETY: `error` comes from the host.
    unsafe {
        match outcome {
            Ok(Ok(())) => STATUS_OK,
            Ok(Err(e)) => {
                tell(error, &e.to_string());
                STATUS_ERROR
            }
            Err(payload) => {
                tell(error, panic_message(&*payload));
                STATUS_PANIC
            }
        }
    }
}

unsafe extern "C" fn drop_session<T: Protocol>(_state: *const c_void, session: *mut c_void) {
    // SAFETY: `session` came from `negotiate::<T>` and is handed back exactly once.
    let session = unsafe { Box::from_raw(session as *mut T::Session) };
    // A panicking Drop costs nothing more than the leak of what it was dropping.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(session)));
}

/// Forwards this library's `log` records (a cdylib has its own copy of the `log` crate) to
/// the host's logger.
struct HostLogger(&'static HostApi);

fn level_number(level: log::Level) -> u32 {
    level as u32 // Error = 1 … Trace = 5, as the ABI says
}

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let target = RawBytes::new(metadata.target().as_bytes());
        // SAFETY: the host's function; `target` is borrowed for the call.
        unsafe { (self.0.log_enabled)(level_number(metadata.level()), target) != 0 }
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
        // SAFETY: the host's function; both slices are borrowed for the call.
        unsafe {
            (self.0.log)(
                level_number(record.level()),
                target,
                RawBytes::new(message.as_bytes()),
            )
        }
    }

    fn flush(&self) {}
}

fn install_logger(host: &HostApi) {
    // SAFETY: the host's HostApi is a static of the daemon that outlives every plugin call.
    let host: &'static HostApi = unsafe { &*(host as *const HostApi) };
    if log::set_logger(Box::leak(Box::new(HostLogger(host)))).is_ok() {
        let level = match host.max_log_level {
            0 => log::LevelFilter::Off,
            1 => log::LevelFilter::Error,
            2 => log::LevelFilter::Warn,
            3 => log::LevelFilter::Info,
            4 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        };
        log::set_max_level(level);
    }
}

/// Runs the entry function's body: builds the descriptor once, never lets a panic out.
pub fn entry<T: Protocol>(
    slot: &'static std::sync::OnceLock<Descriptor>,
    package: &str,
) -> *const PluginDescriptor {
    catch_unwind(|| slot.get_or_init(|| describe::<T>(package)).as_ptr())
        .unwrap_or(core::ptr::null())
}
