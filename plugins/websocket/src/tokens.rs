//! Token targets, as websockify's `TokenFile` plugin reads them (`--token-plugin TokenFile
//! --token-source FILE_OR_DIR`): one listener, many services, chosen per connection by a
//! token the client names. Lines are `token: host:port` (or `token: unix_socket:/path`),
//! `#` starts a comment; the source is one file or every file of a folder, read again when
//! one changes (looked at at most once a second) and so on SIGHUP too.
//!
//! The token is the request's `token=` query parameter (noVNC's
//! `path=websockify?token=X`, websockify's own). Not a path segment: the daemon's access
//! line shows paths whole, and cuts only `token=` values, so a token in the path would be
//! logged whole. An unknown token is answered `404` before the `101`; a token is never
//! logged whole ([`redacted`]).

use protocol_api::path::RequestPath;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How often the source's files are looked at (a `stat` each) for changes.
const RECHECK: Duration = Duration::from_secs(1);

/// Where a token leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp(String),
    Unix(PathBuf),
}

/// Reads a TokenFile's text: the targets by token, and the lines that are not one (for a
/// warning naming the line, never the token).
///
/// As websockify reads it, the token ends at the first `:` followed by a space or tab, so a
/// token may hold colons (`vm:7: host:5900`); where no colon is followed by one, at the
/// first colon (`alice:host:5900`, which websockify refuses). Unlike websockify, a `#`
/// starts a comment anywhere on the line.
pub fn parse(text: &str) -> (HashMap<String, Target>, Vec<usize>) {
    let mut targets = HashMap::new();
    let mut bad = Vec::new();
    for (at, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let target = token_and_target(line).and_then(|(token, target)| {
            let (token, target) = (token.trim(), target.trim());
            let target = match target.strip_prefix("unix_socket:") {
                Some(path) if path.starts_with('/') => Target::Unix(PathBuf::from(path)),
                Some(_) => return None,
                None => {
                    let (host, port) = target.rsplit_once(':')?;
                    let port: u16 = port.trim().parse().ok().filter(|p| *p > 0)?;
                    let host = host.trim();
                    if host.is_empty() || host.contains(char::is_whitespace) {
                        return None;
                    }
                    Target::Tcp(format!("{host}:{port}"))
                }
            };
            (!token.is_empty()).then(|| (token.to_string(), target))
        });
        match target {
            Some((token, target)) => {
                targets.insert(token, target);
            }
            None => bad.push(at + 1),
        }
    }
    (targets, bad)
}

/// A line cut where its token ends: at `: ` (websockify's `re.split(r':\s', line)`), else
/// at its first colon.
fn token_and_target(line: &str) -> Option<(&str, &str)> {
    let spaced = line
        .match_indices(':')
        .map(|(at, _)| at)
        .find(|&at| line[at + 1..].starts_with([' ', '\t']));
    match spaced {
        Some(at) => Some((&line[..at], &line[at + 1..])),
        None => line.split_once(':'),
    }
}

/// The token a request names: the first non-empty `token=` of its query, decoded as
/// websockify decodes it (Python's `parse_qs`: percent-escapes, `+` for a space, names
/// decoded too, a trailing newline dropped), so a token with `/`, `+` or `=` in it,
/// percent-encoded in noVNC's `path=` as it must be, matches its line.
pub fn token_of(path: &RequestPath<'_>) -> Option<String> {
    form_urlencoded::parse(path.query()?.as_bytes())
        .find(|(name, value)| name == "token" && !value.is_empty())
        .map(|(_, token)| token.trim_end_matches('\n').to_string())
        .filter(|token| !token.is_empty())
}

/// A token as the log may show it: its first three characters.
pub fn redacted(token: &str) -> String {
    let shown: String = token.chars().take(3).collect();
    format!("{shown}... ({} characters)", token.chars().count())
}

/// One route's tokens, kept in step with their files.
#[derive(Debug)]
pub struct Table {
    source: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the files were last looked at.
    checked: Option<Instant>,
    /// Each file's modification time and length when read (`None`: not read yet).
    stamps: Option<Vec<(PathBuf, Option<SystemTime>, u64)>>,
    targets: HashMap<String, Target>,
}

impl Table {
    /// Reads `source` (a file, or a folder of them); an error names it and why.
    pub fn open(source: &Path) -> Result<Table, String> {
        // At start a source that is not there is a mistake to name (later, its tokens end).
        std::fs::metadata(source).map_err(|e| format!("{}: {e}", source.display()))?;
        let table = Table {
            source: source.to_path_buf(),
            state: Mutex::default(),
        };
        {
            let mut state = table.state.lock().unwrap_or_else(|e| e.into_inner());
            table.reread(&mut state, Instant::now(), true)?;
        }
        Ok(table)
    }

    /// Where `token` leads, reading the files again first if they changed.
    pub fn lookup(&self, token: &str) -> Option<Target> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if state
            .checked
            .is_none_or(|at| now.duration_since(at) >= RECHECK)
        {
            if let Err(why) = self.reread(&mut state, now, false) {
                // Failing closed: a source that cannot be read grants nothing (revoking
                // access by taking a file away must not leave it granted: a review).
                if !state.targets.is_empty() {
                    log::error!(
                        "websocket tokens: {why}; no token leads anywhere until it can be read"
                    );
                    state.targets.clear();
                }
                state.stamps = None;
            }
        }
        state.targets.get(token).cloned()
    }

    /// The source's files; none when the source is gone (removed, its tokens with it: a
    /// revoked file must not keep its tokens, as a folder's removed files do not).
    fn files(&self) -> Result<Vec<PathBuf>, String> {
        let source = self.source.display();
        let meta = match std::fs::metadata(&self.source) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("{source}: {e}")),
        };
        if !meta.is_dir() {
            return Ok(vec![self.source.clone()]);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.source)
            .map_err(|e| format!("{source}: {e}"))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.is_file())
            .collect();
        files.sort();
        Ok(files)
    }

    /// Reads the files again if any changed (or came, or went) since the last read.
    /// `strict` (at start): a file that cannot be read is an error; later it is skipped,
    /// with a warning, and grants nothing.
    fn reread(&self, state: &mut State, now: Instant, strict: bool) -> Result<(), String> {
        state.checked = Some(now);
        let files = self.files()?;
        let stamps: Vec<_> = files
            .iter()
            .map(|file| {
                let meta = std::fs::metadata(file).ok();
                let modified = meta.as_ref().and_then(|m| m.modified().ok());
                (file.clone(), modified, meta.map_or(0, |m| m.len()))
            })
            .collect();
        if state.stamps.as_ref() == Some(&stamps) {
            return Ok(());
        }
        let mut targets = HashMap::new();
        for file in &files {
            let text = match std::fs::read_to_string(file) {
                Ok(text) => text,
                Err(e) if strict => return Err(format!("{}: {e}", file.display())),
                Err(e) => {
                    log::warn!(
                        "websocket tokens: {}: {e}; its tokens lead nowhere",
                        file.display()
                    );
                    continue;
                }
            };
            let (read, bad) = parse(&text);
            for line in bad {
                log::warn!(
                    "websocket tokens: {} line {line} is not 'token: host:port' nor \
                     'token: unix_socket:/path'; skipped",
                    file.display()
                );
            }
            targets.extend(read);
        }
        log::info!(
            "websocket tokens: {} token(s) read from {}",
            targets.len(),
            self.source.display()
        );
        state.targets = targets;
        state.stamps = Some(stamps);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websockifys_token_file_format() {
        let (targets, bad) = parse(
            "# noVNC desktops\n\
             alice: 127.0.0.1:5901\n\
             bob:vnc.internal:5902   # trailing comment\n\
             \n\
             carol: unix_socket:/run/vnc/carol.sock\n\
             broken line\n\
             dave: host:0\n\
             eve: unix_socket:relative\n",
        );
        assert_eq!(targets["alice"], Target::Tcp("127.0.0.1:5901".into()));
        assert_eq!(targets["bob"], Target::Tcp("vnc.internal:5902".into()));
        assert_eq!(
            targets["carol"],
            Target::Unix(PathBuf::from("/run/vnc/carol.sock"))
        );
        assert_eq!(targets.len(), 3);
        assert_eq!(bad, [6, 7, 8]);
    }

    #[test]
    fn a_token_ends_where_websockify_ends_it() {
        let (targets, bad) = parse(
            "vm:7: 10.0.0.7:5900\n\
             host:5901:\t10.0.0.8:5901\n\
             plain:10.0.0.9:5902\n\
             sock:1: unix_socket:/run/vnc.sock\n",
        );
        assert_eq!(targets["vm:7"], Target::Tcp("10.0.0.7:5900".into()));
        assert_eq!(targets["host:5901"], Target::Tcp("10.0.0.8:5901".into()));
        assert_eq!(targets["plain"], Target::Tcp("10.0.0.9:5902".into()));
        assert_eq!(
            targets["sock:1"],
            Target::Unix(PathBuf::from("/run/vnc.sock"))
        );
        assert!(bad.is_empty(), "{bad:?}");
    }

    #[test]
    fn the_token_comes_from_the_query() {
        let path = |p| RequestPath::parse(p).unwrap();
        let token = |p| token_of(&path(p));
        assert_eq!(token("/websockify?token=abc").as_deref(), Some("abc"));
        assert_eq!(token("/vnc/abc?x=1&token=def").as_deref(), Some("def"));
        assert_eq!(token("/vnc/abc"), None);
        assert_eq!(token("/vnc/?token="), None);
        // As Python's parse_qs gives it to websockify's TokenFile.
        assert_eq!(
            token("/w?token=a%2Fb%2Bc%3D%3D").as_deref(),
            Some("a/b+c==")
        );
        assert_eq!(token("/w?token=two+words").as_deref(), Some("two words"));
        assert_eq!(token("/w?tok%65n=abc").as_deref(), Some("abc"));
        assert_eq!(token("/w?token=&token=abc").as_deref(), Some("abc"));
        assert_eq!(token("/w?token=abc%0A").as_deref(), Some("abc"));
        assert_eq!(token("/w?token=%0A"), None);
        assert_eq!(token("/w?token=%FF").as_deref(), Some("\u{FFFD}"));
        assert_eq!(redacted("secret-token"), "sec... (12 characters)");
    }
}
