//! Protocol plugins: loading a folder of libraries at start, and calling them safely.
//!
//! Loading checks, in order, with one error line naming the file and the reason for each
//! failure (the other files still load): the library opens (`RTLD_NOW | RTLD_LOCAL`), it
//! exports the v1 entry, the descriptor's magic, size and minor version fit, its tokens are
//! non-empty and not taken by an earlier file, and its `init` succeeds. Files are loaded in
//! sorted order, so who wins a token clash does not depend on the file system.
//!
//! Libraries are never unloaded.

mod ffi;

pub use ffi::{HostConnection, RequestHeaders, Session};

use crate::route::TokenTable;
use std::io;
use std::path::{Path, PathBuf};

/// One loaded plugin.
pub struct Plugin {
    pub name: String,
    pub file: PathBuf,
    pub tokens: Vec<String>,
    pub build: String,
    loaded: ffi::Loaded,
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
    Panicked(String),
}

/// How `serve` ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    Done,
    Failed(String),
    Panicked(String),
}

/// The request a plugin sees, borrowed from the job that carries it.
pub struct RequestParts<'a> {
    pub method: &'a [u8],
    pub target: &'a [u8],
    pub version_minor: u32,
    pub headers: RequestHeaders<'a>,
    pub peer: &'a str,
    pub body: &'a [u8],
    pub protocol: &'a [u8],
}

impl Plugin {
    pub fn negotiate(&self, request: &RequestParts<'_>) -> Negotiation<'_> {
        self.loaded.negotiate(request)
    }

    pub fn serve(
        &self,
        session: Session<'_>,
        request: &RequestParts<'_>,
        connection: &mut HostConnection<'_>,
    ) -> Served {
        self.loaded.serve(session, request, connection)
    }
}

/// Every plugin that loaded, and the token table routing uses.
#[derive(Default)]
pub struct Registry {
    pub plugins: Vec<Plugin>,
    pub tokens: TokenTable,
}

/// The platform's shared-library suffix.
const LIBRARY_SUFFIX: &str = std::env::consts::DLL_SUFFIX;

/// Loads every library in `dir`. Fails only when the folder cannot be read; a file that
/// is not a usable plugin is logged and skipped.
pub fn load_dir(dir: &Path) -> io::Result<Registry> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    files.retain(|path| path.is_file() && path.to_string_lossy().ends_with(LIBRARY_SUFFIX));
    files.sort();

    let mut registry = Registry::default();
    for file in files {
        if let Err(reason) = registry.load(&file) {
            log::error!("plugin {}: {reason}; skipped", file.display());
        }
    }
    let summary: Vec<String> = registry
        .plugins
        .iter()
        .map(|p| format!("{} [{}] ({})", p.name, p.tokens.join(", "), p.build))
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
    fn load(&mut self, file: &Path) -> Result<(), String> {
        let opened = ffi::open(file).map_err(|e| e.to_string())?;
        let index = self.plugins.len();
        let mut tokens = self.tokens.clone();
        for token in &opened.tokens {
            if !crate::http::response::is_token(token) {
                return Err(format!("token {token:?} is not a valid HTTP token"));
            }
            if let Err(owner) = tokens.insert(token, index) {
                let owner = &self.plugins[owner];
                return Err(format!(
                    "token {token:?} is already served by plugin {} ({})",
                    owner.name,
                    owner.file.display()
                ));
            }
        }
        let (name, build, plugin_tokens) = (
            opened.name.clone(),
            opened.build.clone(),
            opened.tokens.clone(),
        );
        let loaded = ffi::init(opened).map_err(|e| e.to_string())?;
        self.tokens = tokens;
        self.plugins.push(Plugin {
            name,
            file: file.to_path_buf(),
            tokens: plugin_tokens,
            build,
            loaded,
        });
        Ok(())
    }
}
