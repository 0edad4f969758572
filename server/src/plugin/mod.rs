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

mod elf;
#[allow(unsafe_code)]
mod ffi;
mod host_io;
pub mod metrics;
mod wakes;

pub use ffi::{Handler, Negotiated, RequestHeaders};
pub use host_io::{waker_of, BlockingConn, EventIo, Flow, ReadAhead, Watched, Watcher};
pub use wakes::{WakeTarget, Wakes};

use crate::route::TokenTable;
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One loaded plugin. Plugins are never freed (their libraries are never unloaded), so a
/// generation's registry and every connection refer to them as `&'static`.
pub struct Plugin {
    pub name: String,
    pub file: PathBuf,
    pub tokens: Vec<String>,
    pub build: String,
    /// The settings it reads (ABI 1.6; none for older plugins).
    pub settings: Vec<Declared>,
    /// The generation of the plugin folder that loaded it (an unchanged file keeps its
    /// plugin, and this, across reloads).
    pub generation: u64,
    /// The file as it was when loaded: a reload loads it again only if it changed.
    identity: Option<FileIdentity>,
    loaded: ffi::Loaded,
    health: Health,
    pub stats: PluginStats,
}

/// One setting a plugin reads, as it declares it (ABI 1.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub name: String,
    pub default: String,
    pub help: String,
}

/// What a plugin has done, for `/metrics`.
#[derive(Default)]
pub struct PluginStats {
    pub switches: AtomicU64,
    /// Connections it holds now (switched, not yet ended), for the status page.
    pub open: std::sync::atomic::AtomicI64,
    pub panics: AtomicU64,
    /// Calls on an event loop that took longer than `SLOW_CALL`.
    pub slow_calls: AtomicU64,
    /// When a slow call was last logged (milliseconds since `protocol_api::moment::epoch`).
    pub slow_logged: AtomicU64,
    /// The longest slow call so far, in microseconds.
    pub slowest_call_us: AtomicU64,
}

/// A file's identity and version: a replaced or rewritten file differs in one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
    size: u64,
    modified_ns: i128,
}

impl FileIdentity {
    fn of(path: &Path) -> Option<FileIdentity> {
        Some(FileIdentity::of_meta(&std::fs::metadata(path).ok()?))
    }

    fn of_meta(meta: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// What a reload finds at a path, from the identity of the file a plugin was loaded from
/// there (`None` when none was) and of the file there now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileChange {
    /// No plugin came from this path: load it.
    New,
    /// The very file loaded before: keep its plugin (state, counters).
    Unchanged,
    /// Another file under the same name (a new inode, the same one written into, or one
    /// that cannot be told apart): load it beside the old one (which runs from its own
    /// copy, so writing into the file harmed nothing).
    Replaced,
}

impl FileChange {
    fn of(before: Option<Option<FileIdentity>>, now: Option<FileIdentity>) -> FileChange {
        match (before, now) {
            (None, _) => FileChange::New,
            (Some(Some(old)), Some(new)) if old == new => FileChange::Unchanged,
            _ => FileChange::Replaced,
        }
    }
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
        session: Negotiated<'a>,
        headers: Vec<(String, String)>,
    },
    Reject {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    Decline,
    /// A readiness plugin asks to negotiate again on a worker, where it may block.
    OnWorker,
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
/// The first minor ABI version whose plugins are told a connection came over TLS.
pub const MINOR_WITH_TLS: u32 = 5;

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
    /// `negotiate` runs on a worker thread (ABI 1.2).
    pub may_block: bool,
    /// The TLS session the connection came over (ABI 1.5).
    pub tls: Option<&'a crate::tls::Handshake>,
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

    /// Whether it can be handed a TLS connection: built for ABI 1.5 or later, it is told
    /// that the socket it is lent carries ciphertext. An older one might splice it.
    pub fn serves_tls(&self) -> bool {
        self.abi_minor() >= MINOR_WITH_TLS
    }

    pub fn negotiate(&self, request: &RequestParts<'_>) -> Negotiation<'_> {
        self.loaded.negotiate(request)
    }

    /// Runs a blocking plugin's `serve` until the connection is done.
    pub fn serve(
        &self,
        session: Negotiated<'_>,
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
        session: Negotiated<'_>,
        request: &RequestParts<'_>,
    ) -> Result<Handler<'_>, Failure> {
        self.loaded.start(session, request)
    }
}

/// One generation of the plugin folder: every plugin that loaded, and the token table
/// routing uses. A reload makes a new one; requests routed with an older one, and the
/// connections they switched, keep it.
pub struct Registry {
    pub plugins: Vec<&'static Plugin>,
    pub tokens: TokenTable,
    /// 1 at start, one more for each reload.
    pub generation: u64,
    /// Files that did not load, as they were then, and why: a reload does not try one
    /// again until it changes (each try of a library that opens but is not used costs
    /// its copy and a descriptor for good, 17 MB at each reload for a second h2c, and SIGHUP
    /// comes with every certificate renewal: a review).
    failed: Vec<(PathBuf, FileIdentity, String)>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            plugins: Vec::new(),
            tokens: TokenTable::default(),
            generation: 1,
            failed: Vec::new(),
        }
    }
}

impl Registry {
    /// Whether plugin `index` takes new connections (see [`Plugin::in_service`]).
    pub fn in_service(&self, index: usize) -> bool {
        self.plugins.get(index).is_some_and(|p| p.in_service())
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
    let owner = Owner {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    };
    untrusted(
        owner,
        crate::sys::effective_ids(),
        &path.display().to_string(),
    )
}

/// Who may write a file: its mode, owner and group.
#[derive(Debug, Clone, Copy)]
struct Owner {
    mode: u32,
    uid: u32,
    gid: u32,
}

/// [`unsafe_because`]'s rule, pure: why a file with `owner` may not be trusted by a daemon
/// running as `(uid, gid)`; `shown` names it in the fix.
fn untrusted(owner: Owner, (uid, gid): (u32, u32), shown: &str) -> Option<String> {
    let Owner { mode, .. } = owner;
    if mode & 0o002 != 0 {
        Some(format!(
            "is writable by every user (mode {mode:o}); anyone could make the daemon run \
             their code: chmod o-w {shown}"
        ))
    } else if mode & 0o020 != 0 && owner.gid != 0 && owner.gid != gid {
        Some(format!(
            "is writable by group {} (mode {mode:o}), which is neither root's nor the daemon's: \
             chmod g-w {shown}",
            owner.gid
        ))
    } else if owner.uid != 0 && owner.uid != uid {
        Some(format!(
            "belongs to user {}, neither root nor the daemon's user ({uid}): chown it to one of them",
            owner.uid
        ))
    } else {
        None
    }
}

/// The plugin libraries in `dir`, in name order (who wins a token clash must not depend on
/// the file system).
fn library_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    files.retain(|path| path.is_file() && path.to_string_lossy().ends_with(LIBRARY_SUFFIX));
    files.sort();
    Ok(files)
}

/// The settings each plugin in `dir` declares, by plugin name, for `--help`: each file is
/// opened and its descriptor read, but no plugin is initialised. Files that are not
/// plugins, or that may not be trusted, are left out.
pub fn declared_settings(dir: &Path) -> Vec<(String, Vec<Declared>)> {
    if dir.exists() && unsafe_because(dir).is_some() {
        return Vec::new();
    }
    library_files(dir)
        .unwrap_or_default()
        .iter()
        .filter(|file| unsafe_because(file).is_none())
        .filter_map(|file| ffi::open(file).ok())
        .map(|opened| (opened.name.clone(), opened.settings.clone()))
        .collect()
}

/// Every `SWITCHYARD_*` variable in the environment that neither the daemon (`daemon`)
/// nor a plugin of `registry` reads: a misspelt setting, or one of a plugin not loaded.
/// Empty when a plugin built before ABI 1.6 (which lists no settings) is loaded.
pub fn unread_settings(registry: &Registry, daemon: &[&str]) -> Vec<String> {
    if registry.plugins.iter().any(|p| p.abi_minor() < 6) {
        return Vec::new();
    }
    let read = |name: &str| {
        daemon.contains(&name)
            || registry
                .plugins
                .iter()
                .any(|p| p.settings.iter().any(|s| s.name == name))
    };
    let mut unread: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with("SWITCHYARD_") && !read(name))
        .collect();
    unread.sort();
    unread
}

/// `name [tokens] (build; on ...)` for each plugin, as the logs and `--check` show them.
fn describe(plugin: &Plugin) -> String {
    let mode = if plugin.is_readiness() {
        "event loops"
    } else {
        "workers"
    };
    format!(
        "{} [{}] ({}; on {mode})",
        plugin.name,
        plugin.tokens.join(", "),
        plugin.build
    )
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
    let files = library_files(dir).map_err(StartError::Folder)?;
    let mut registry = Registry::default();
    for file in files {
        if let Some(why) = unsafe_because(&file) {
            log::error!("plugin {} {why}; skipped", file.display());
            continue;
        }
        match registry.load_copy(&file) {
            Ok(_) => {}
            Err(ffi::LoadError::Init(message)) => {
                return Err(StartError::Settings { file, message });
            }
            Err(reason) => {
                log::error!("plugin {}: {reason}; skipped", file.display());
                if let Some(identity) = FileIdentity::of(&file) {
                    registry
                        .failed
                        .push((file.clone(), identity, reason.to_string()));
                }
            }
        }
    }
    let summary: Vec<String> = registry.plugins.iter().map(|p| describe(p)).collect();
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

/// What a reload changed, for its log line.
#[derive(Debug, Default)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub replaced: Vec<String>,
    pub unchanged: Vec<String>,
    pub removed: Vec<String>,
    /// Files that did not load: `file: reason`.
    pub failed: Vec<String>,
}

impl ReloadReport {
    /// One line: what changed, and what did not load.
    pub fn summary(&self, generation: u64) -> String {
        let list = |what: &str, names: &[String]| match names.is_empty() {
            true => None,
            false => Some(format!("{what} {}", names.join(", "))),
        };
        let parts: Vec<String> = [
            list("added", &self.added),
            list("replaced", &self.replaced),
            list("removed", &self.removed),
            list("unchanged", &self.unchanged),
            list(
                "FAILED (the previous generation serves on where there was one):",
                &self.failed,
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        format!("reload: generation {generation}: {}", parts.join("; "))
    }
}

/// Reads `dir` again for a new generation after `current`: unchanged files keep their
/// plugin (same state, same counters), new and changed ones load anew, files that are gone
/// are no longer offered. A file that fails to load leaves its previous generation (if it
/// had one) in this one. Nothing is ever unloaded: connections switched by an older
/// generation run on.
pub fn reload(dir: &Path, current: &Registry) -> Result<(Registry, ReloadReport), String> {
    if let Some(why) = unsafe_because(dir) {
        return Err(format!("the plugin folder {} {why}", dir.display()));
    }
    let files = library_files(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut next = Registry {
        generation: current.generation + 1,
        ..Registry::default()
    };
    let mut report = ReloadReport::default();
    for file in &files {
        let previous = current.plugins.iter().copied().find(|p| &p.file == file);
        let change = FileChange::of(previous.map(|p| p.identity), FileIdentity::of(file));
        if let (FileChange::Unchanged, Some(previous)) = (change, previous) {
            match next.keep(previous) {
                Ok(()) => report.unchanged.push(previous.name.clone()),
                Err(e) => report.failed.push(format!("{}: {e}", file.display())),
            }
            continue;
        }
        let identity = FileIdentity::of(file);
        let failed_before = current
            .failed
            .iter()
            .find(|(path, version, _)| path == file && Some(*version) == identity)
            .map(|(_, _, why)| why.clone());
        let loaded = match (unsafe_because(file), failed_before) {
            (Some(why), _) => Err(why),
            (None, Some(why)) => Err(format!("{why} (unchanged since)")),
            (None, None) => next.load_copy(file).map_err(|e| e.to_string()),
        };
        if let (Err(why), Some(identity)) = (&loaded, identity) {
            let why = why.trim_end_matches(" (unchanged since)").to_string();
            next.failed.push((file.clone(), identity, why));
        }
        match loaded {
            Ok(plugin) => match previous {
                Some(_) => report.replaced.push(describe(plugin)),
                None => report.added.push(describe(plugin)),
            },
            Err(why) => {
                report.failed.push(format!("{}: {why}", file.display()));
                if let Some(previous) = previous {
                    let _ = next.keep(previous);
                }
            }
        }
    }
    report.removed = current
        .plugins
        .iter()
        .filter(|p| !files.contains(&p.file))
        .map(|p| p.name.clone())
        .collect();
    Ok((next, report))
}

impl Registry {
    /// Loads `file` (opened as `open_as`, another name for what `identity` describes) into
    /// this generation, if its tokens are free here.
    fn load(
        &mut self,
        file: &Path,
        open_as: &Path,
        identity: Option<FileIdentity>,
    ) -> Result<&'static Plugin, ffi::LoadError> {
        let opened = ffi::open(open_as)?;
        self.check_tokens(&opened.tokens)?;
        let (name, build, tokens, settings) = (
            opened.name.clone(),
            opened.build.clone(),
            opened.tokens.clone(),
            opened.settings.clone(),
        );
        let loaded = ffi::init(opened)?;
        let plugin: &'static Plugin = Box::leak(Box::new(Plugin {
            name,
            file: file.to_path_buf(),
            tokens,
            build,
            settings,
            generation: self.generation,
            identity,
            loaded,
            health: Health::default(),
            stats: PluginStats::default(),
        }));
        self.keep(plugin).expect("tokens were checked before init");
        Ok(plugin)
    }

    /// Loads `file` from a private copy of it ([`crate::sys::sealed_copy`]), so that the
    /// file can be written into (`cp` over it) while the daemon runs its code: a library
    /// mapped from the file itself changes under the process, which crashes (a review found
    /// `cp` of the very same bytes over a loaded plugin killed the daemon). The copy costs
    /// memory the size of the file (17 MB for h2c with its line tables, mostly never
    /// mapped); what the loader maps of it counts in RSS as the file's pages did.
    ///
    /// `dlopen` hands back a library it has loaded under the same name, so the copy is
    /// opened as `/proc/self/fd/N`, a descriptor that stays open for good once a library was
    /// loaded under it (a closed number could come back and name the older library). When
    /// `dlopen` itself refused the file (not a library), nothing holds the name and the
    /// descriptor is closed: a broken file left in the folder costs nothing at each reload.
    ///
    /// Without `/proc` (a bare chroot) a copy cannot be named: the file itself is loaded, as
    /// before, and must then be replaced rather than written into (said once).
    fn load_copy(&mut self, file: &Path) -> Result<&'static Plugin, ffi::LoadError> {
        if !Path::new("/proc/self/fd").is_dir() {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                log::warn!(
                    "/proc is not mounted: plugins load from their files, so a plugin file \
                     must be replaced (install, mv), never written into, while the daemon runs"
                )
            });
            return self.load(file, file, FileIdentity::of(file));
        }
        let open_error = |e: io::Error| ffi::LoadError::Open(e.to_string());
        let original = std::fs::File::open(file).map_err(open_error)?;
        // The version loaded is the one copied: identified by the descriptor it came from.
        let identity = original.metadata().ok().map(|m| FileIdentity::of_meta(&m));
        // A memfd's name is 249 bytes at most (the file's own name is in every line).
        let shown: String = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .chars()
            .take(64)
            .collect();
        let copy = crate::sys::sealed_copy(&original, &format!("switchyard-plugin:{shown}"))
            .map_err(open_error)?;
        // A file written while it was copied (a reload racing `cp`) is not loaded: a copy
        // cut short maps pages past its end, whose first touch kills the daemon (SIGBUS).
        let after = original.metadata().ok().map(|m| FileIdentity::of_meta(&m));
        drop(original);
        if after != identity {
            return Err(ffi::LoadError::Open(
                "changed while it was read; reload again once it is written".into(),
            ));
        }
        let mut head = vec![0u8; 64 * 1024];
        let read = std::os::unix::fs::FileExt::read_at(&copy, &mut head, 0).map_err(open_error)?;
        let len = copy.metadata().map_err(open_error)?.len();
        elf::segments_within(&head[..read], len).map_err(ffi::LoadError::Open)?;
        let name = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&copy)
        ));
        let loaded = self.load(file, &name, identity);
        if !matches!(loaded, Err(ffi::LoadError::Open(_))) {
            std::mem::forget(copy);
        }
        loaded
    }

    fn check_tokens(&self, tokens: &[String]) -> Result<(), ffi::LoadError> {
        let mut table = self.tokens.clone();
        for token in tokens {
            if !crate::http::response::is_token(token) {
                return Err(ffi::LoadError::BadToken(format!(
                    "token {token:?} is not a valid HTTP token"
                )));
            }
            if let Err(owner) = table.insert(token, self.plugins.len()) {
                let owner = self.plugins[owner];
                return Err(ffi::LoadError::BadToken(format!(
                    "token {token:?} is already served by plugin {} ({})",
                    owner.name,
                    owner.file.display()
                )));
            }
        }
        Ok(())
    }

    /// Adds an already loaded plugin to this generation.
    fn keep(&mut self, plugin: &'static Plugin) -> Result<(), ffi::LoadError> {
        self.check_tokens(&plugin.tokens)?;
        let index = self.plugins.len();
        for token in &plugin.tokens {
            let _ = self.tokens.insert(token, index);
        }
        self.plugins.push(plugin);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(mode: u32, uid: u32, gid: u32) -> Owner {
        Owner { mode, uid, gid }
    }

    /// sshd's `StrictModes`, each branch: the daemon runs as user 1000, group 1000.
    #[test]
    fn only_root_and_the_daemon_may_write_what_it_loads() {
        let us = (1000, 1000);
        let why = |o| untrusted(o, us, "/plugins");
        assert_eq!(
            why(owner(0o755, 0, 0)),
            None,
            "root's, not writable by others"
        );
        assert_eq!(
            why(owner(0o775, 1000, 1000)),
            None,
            "ours, our group may write"
        );
        assert_eq!(why(owner(0o775, 0, 0)), None, "root's group may write");
        let everyone = why(owner(0o757, 0, 0)).unwrap();
        assert!(
            everyone.contains("writable by every user") && everyone.contains("chmod o-w /plugins")
        );
        let group = why(owner(0o775, 0, 50)).unwrap();
        assert!(group.contains("writable by group 50") && group.contains("chmod g-w /plugins"));
        assert_eq!(
            why(owner(0o755, 0, 50)),
            None,
            "another group that may not write"
        );
        let stranger = why(owner(0o755, 65534, 0)).unwrap();
        assert!(stranger.contains("belongs to user 65534") && stranger.contains("chown"));
        assert!(
            why(owner(0o4777, 0, 0)).is_some(),
            "set-id bits do not hide o+w"
        );
    }

    fn identity(inode: u64, size: u64, modified_ns: i128) -> FileIdentity {
        FileIdentity {
            device: 8,
            inode,
            size,
            modified_ns,
        }
    }

    /// What a reload does with each file, from what it loaded there before.
    #[test]
    fn a_reload_tells_new_unchanged_replaced_and_rewritten_files_apart() {
        let loaded = identity(100, 4096, 1);
        assert_eq!(FileChange::of(None, Some(loaded)), FileChange::New);
        assert_eq!(
            FileChange::of(Some(Some(loaded)), Some(loaded)),
            FileChange::Unchanged
        );
        let renamed_over = identity(101, 4096, 1);
        assert_eq!(
            FileChange::of(Some(Some(loaded)), Some(renamed_over)),
            FileChange::Replaced
        );
        let written_into = identity(100, 4096, 2);
        assert_eq!(
            FileChange::of(Some(Some(loaded)), Some(written_into)),
            FileChange::Replaced,
            "written in place: a new version (the old one runs from its copy)"
        );
        assert_eq!(
            FileChange::of(Some(Some(loaded)), Some(identity(100, 8192, 1))),
            FileChange::Replaced,
            "a size changed in place"
        );
        // What cannot be examined is never taken for the file loaded before.
        assert_eq!(
            FileChange::of(Some(None), Some(loaded)),
            FileChange::Replaced
        );
        assert_eq!(
            FileChange::of(Some(Some(loaded)), None),
            FileChange::Replaced
        );
    }
}
