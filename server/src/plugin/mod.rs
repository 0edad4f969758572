//! Protocol plugins: loading a folder of libraries at start, and calling them safely.
//!
//! Loading checks, in order, with one error line naming the file and the reason for each
//! failure (the other files still load): the library opens (`RTLD_NOW | RTLD_LOCAL`), it
//! exports the v1 entry, the descriptor's magic, size and minor version fit, its functions
//! are there (one way to serve: blocking `serve`, or readiness `start`/`on_ready`/
//! `drop_conn`), its tokens are non-empty and not taken by an earlier file, and its `init`
//! does not panic. Files are loaded in sorted order, so who wins a token clash does not
//! depend on the file system.
//!
//! One failure is not skipped: a plugin whose `init` returns an error (its settings are
//! wrong) stops the start, as an invalid daemon setting does.
//!
//! Libraries are never unloaded.

mod ffi;
mod host_io;

pub use ffi::{Handler, RequestHeaders, Session};
pub use host_io::{BlockingConn, EventIo, Flow, ReadAhead};

use crate::route::TokenTable;
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One loaded plugin.
pub struct Plugin {
    pub name: String,
    pub file: PathBuf,
    pub tokens: Vec<String>,
    pub build: String,
    loaded: ffi::Loaded,
    health: Health,
}

/// How far back panics count towards `SWITCHYARD_PLUGIN_PANIC_LIMIT`.
const PANIC_WINDOW: Duration = Duration::from_secs(60);

/// A plugin's standing: its recent panics, and whether it was taken out of service.
#[derive(Default)]
struct Health {
    /// When it panicked within the last minute (at most limit + 1 kept).
    panics: Mutex<VecDeque<Instant>>,
    out_of_service: AtomicBool,
}

/// What `negotiate` decided.
pub enum Negotiation<'a> {
    Accept {
        session: Session<'a>,
        headers: Vec<(String, String)>,
    },
    Reject {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    Decline,
    Failed(Failure),
}

/// A plugin call that did not succeed.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The plugin returned an error (or a code the ABI does not define); the message says.
    Error(String),
    /// The plugin panicked; the panic message.
    Panicked(String),
}

/// The request a plugin sees, borrowed from the switch that carries it.
pub struct RequestParts<'a> {
    pub method: &'a [u8],
    pub target: &'a [u8],
    pub version_minor: u32,
    pub headers: RequestHeaders<'a>,
    pub peer: &'a str,
    pub body: &'a [u8],
    pub protocol: &'a [u8],
    /// `ARRIVAL_UPGRADE` or `ARRIVAL_PRIOR_KNOWLEDGE` (ABI 1.2).
    pub arrival: u32,
}

impl Plugin {
    /// False once the plugin panicked too often: it serves no new connection until restart.
    pub fn in_service(&self) -> bool {
        !self.health.out_of_service.load(Ordering::Relaxed)
    }

    /// Counts a panic; with more than `limit` (non-zero) within a minute the plugin leaves
    /// service. True when this panic took it out.
    pub fn note_panic(&self, limit: u64, now: Instant) -> bool {
        if limit == 0 || !self.in_service() {
            return false;
        }
        let mut panics = self.health.panics.lock().unwrap_or_else(|e| e.into_inner());
        while panics
            .front()
            .is_some_and(|at| now.duration_since(*at) >= PANIC_WINDOW)
        {
            panics.pop_front();
        }
        panics.push_back(now);
        if panics.len() as u64 > limit {
            panics.clear();
            return !self.health.out_of_service.swap(true, Ordering::Relaxed);
        }
        false
    }

    /// True when the plugin runs readiness-driven on the event loops rather than on a worker.
    pub fn is_readiness(&self) -> bool {
        self.loaded.is_readiness()
    }

    /// The minor ABI version the plugin was built against.
    pub fn abi_minor(&self) -> u32 {
        self.loaded.abi_minor()
    }

    pub fn negotiate(&self, request: &RequestParts<'_>) -> Negotiation<'_> {
        self.loaded.negotiate(request)
    }

    /// Runs a blocking plugin's `serve` until the connection is done.
    pub fn serve(
        &self,
        session: Session<'_>,
        request: &RequestParts<'_>,
        connection: &mut BlockingConn<'_>,
    ) -> Result<(), Failure> {
        use std::os::fd::AsRawFd;
        let fd = connection.stream.as_raw_fd();
        self.loaded.serve(session, request, connection, fd)
    }

    /// Makes a readiness plugin's connection state.
    pub fn start(
        &self,
        session: Session<'_>,
        request: &RequestParts<'_>,
    ) -> Result<Handler<'_>, Failure> {
        self.loaded.start(session, request)
    }
}

/// Every plugin that loaded, and the token table routing uses.
#[derive(Default)]
pub struct Registry {
    pub plugins: Vec<Plugin>,
    pub tokens: TokenTable,
}

impl Registry {
    /// Whether plugin `index` takes new connections (see [`Plugin::in_service`]).
    pub fn in_service(&self, index: usize) -> bool {
        self.plugins.get(index).is_some_and(Plugin::in_service)
    }
}

/// Why the daemon cannot start with this plugin folder.
#[derive(Debug)]
pub enum StartError {
    /// The folder cannot be read.
    Folder(io::Error),
    /// Someone besides the daemon's user and root could write into the folder.
    Unsafe(String),
    /// A plugin's `init` refused its settings.
    Settings { file: PathBuf, message: String },
}

/// The platform's shared-library suffix.
const LIBRARY_SUFFIX: &str = std::env::consts::DLL_SUFFIX;

/// Why `path` may not be trusted with code the daemon runs: whoever can write it (or, for a
/// folder, add files to it) could run their code in the daemon. As sshd's `StrictModes`:
/// writable by others, by a group other than root's or the daemon's, or owned by a user
/// other than root or the daemon's.
fn unsafe_because(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => return Some(format!("cannot be examined: {e}")),
    };
    let (uid, gid) = crate::sys::effective_ids();
    let mode = meta.mode() & 0o7777;
    let shown = path.display();
    if mode & 0o002 != 0 {
        Some(format!(
            "is writable by every user (mode {mode:o}); anyone could make the daemon run \
             their code: chmod o-w {shown}"
        ))
    } else if mode & 0o020 != 0 && meta.gid() != 0 && meta.gid() != gid {
        Some(format!(
            "is writable by group {} (mode {mode:o}), which is neither root's nor the daemon's: \
             chmod g-w {shown}",
            meta.gid()
        ))
    } else if meta.uid() != 0 && meta.uid() != uid {
        Some(format!(
            "belongs to user {}, neither root nor the daemon's user ({uid}): chown it to one of them",
            meta.uid()
        ))
    } else {
        None
    }
}

/// Loads every library in `dir`. A file that is not a usable plugin is logged and skipped;
/// the start fails when the folder cannot be read or trusted, or a plugin's settings are
/// invalid.
pub fn load_dir(dir: &Path) -> Result<Registry, StartError> {
    if dir.exists() {
        if let Some(why) = unsafe_because(dir) {
            return Err(StartError::Unsafe(format!(
                "the plugin folder {} {why}",
                dir.display()
            )));
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .and_then(|entries| {
            entries
                .map(|entry| entry.map(|e| e.path()))
                .collect::<io::Result<_>>()
        })
        .map_err(StartError::Folder)?;
    files.retain(|path| path.is_file() && path.to_string_lossy().ends_with(LIBRARY_SUFFIX));
    files.sort();

    let mut registry = Registry::default();
    for file in files {
        if let Some(why) = unsafe_because(&file) {
            log::error!("plugin {} {why}; skipped", file.display());
            continue;
        }
        match registry.load(&file) {
            Ok(()) => {}
            Err(ffi::LoadError::Init(message)) => {
                return Err(StartError::Settings { file, message });
            }
            Err(reason) => log::error!("plugin {}: {reason}; skipped", file.display()),
        }
    }
    let summary: Vec<String> = registry
        .plugins
        .iter()
        .map(|p| {
            let mode = if p.is_readiness() {
                "event loops"
            } else {
                "workers"
            };
            format!(
                "{} [{}] ({}; on {mode})",
                p.name,
                p.tokens.join(", "),
                p.build
            )
        })
        .collect();
    if summary.is_empty() {
        log::warn!(
            "no plugins loaded from {}: every upgrade request will get 426",
            dir.display()
        );
    } else {
        log::info!(
            "loaded {} plugin(s) from {}: {}",
            summary.len(),
            dir.display(),
            summary.join("; ")
        );
    }
    Ok(registry)
}

impl Registry {
    fn load(&mut self, file: &Path) -> Result<(), ffi::LoadError> {
        let opened = ffi::open(file)?;
        let index = self.plugins.len();
        let mut tokens = self.tokens.clone();
        for token in &opened.tokens {
            if !crate::http::response::is_token(token) {
                return Err(ffi::LoadError::BadToken(format!(
                    "token {token:?} is not a valid HTTP token"
                )));
            }
            if let Err(owner) = tokens.insert(token, index) {
                let owner = &self.plugins[owner];
                return Err(ffi::LoadError::BadToken(format!(
                    "token {token:?} is already served by plugin {} ({})",
                    owner.name,
                    owner.file.display()
                )));
            }
        }
        let (name, build, plugin_tokens) = (
            opened.name.clone(),
            opened.build.clone(),
            opened.tokens.clone(),
        );
        let loaded = ffi::init(opened)?;
        self.tokens = tokens;
        self.plugins.push(Plugin {
            name,
            file: file.to_path_buf(),
            tokens: plugin_tokens,
            build,
            loaded,
            health: Health::default(),
        });
        Ok(())
    }
}
