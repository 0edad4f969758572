//! `exec-dir:` routes (websocketd's `--dir`): which program of the route's folder a
//! request names, and the CGI `SCRIPT_NAME` and `PATH_INFO` it runs with.
//!
//! The path below the route is walked a segment at a time, as websocketd walks it: folders
//! are gone through, and the first file met is the program, what follows it being its
//! `PATH_INFO` (`/ws/chat.sh/room/1` under `/ws`: `chat.sh`, with `/room/1`). There is no
//! program (`404`) when the path ends at a folder, when the file is not an executable
//! regular file, when it (or a folder on the way) is a symbolic link that leads out of the
//! folder (websocketd's check too), and, unlike websocketd, when a segment names a hidden
//! file (`.git/hooks/...`, `.env`): a folder of scripts is often a checkout. Segments are
//! percent-decoded (the daemon refused `%2F` and `%00` before) and must be UTF-8.
//!
//! It looks at the disk: called on a worker, never on an event loop.

use std::path::Path;

/// The program a request names in an `exec-dir:` folder.
#[derive(Debug, PartialEq, Eq)]
pub struct Script {
    /// The program's file: the folder joined with the segments that named it.
    pub program: String,
    /// The route and the segments that named the program, decoded: `SCRIPT_NAME`.
    pub name: String,
    /// What follows the program's segment, decoded; empty when nothing: `PATH_INFO`.
    pub path_info: String,
}

/// Why a path names no program: for the log line, never the client.
pub type NotFound = &'static str;

/// The program `path` (normalised, still percent-encoded) names below the route `prefix`
/// whose folder is `dir`.
pub fn resolve(dir: &Path, prefix: &str, path: &str) -> Result<Script, NotFound> {
    let below = path.strip_prefix(prefix).ok_or("not below the route")?;
    // `/ws` covers `/ws/chat.sh`, not `/wschat.sh`.
    let below = match (prefix.ends_with('/'), below.strip_prefix('/')) {
        (true, _) => below,
        (false, Some(below)) => below,
        (false, None) if below.is_empty() => below,
        (false, None) => return Err("no such program"),
    };
    if below.is_empty() {
        return Err("a folder");
    }
    let root = dir
        .canonicalize()
        .map_err(|_| "the folder cannot be read")?;
    let mut file = dir.to_path_buf();
    let mut taken = 0;
    for segment in below.split('/') {
        taken += segment.len() + 1;
        let name = decoded(segment)?;
        if name.is_empty() {
            return Err("an empty segment");
        }
        if name.starts_with('.') {
            return Err("a hidden file");
        }
        file.push(&name);
        let meta = std::fs::metadata(&file).map_err(|_| "no such program")?;
        if meta.is_dir() {
            continue;
        }
        if !is_executable(&meta) {
            return Err("not an executable file");
        }
        let real = file.canonicalize().map_err(|_| "no such program")?;
        let Ok(inside) = real.strip_prefix(&root) else {
            return Err("a symbolic link out of the folder");
        };
        // A link to a hidden file is one too (`git -> .git`: a review ran a hook so).
        let hidden = |c: std::path::Component<'_>| c.as_os_str().as_encoded_bytes()[0] == b'.';
        if inside.components().any(hidden) {
            return Err("a hidden file");
        }
        let named = &path[..path.len() - below.len() + taken - 1];
        let rest = &below[(taken - 1).min(below.len())..];
        // Started by the path asked for, as websocketd starts it: a program that looks at
        // its `$0` (a multi-call binary behind a link) sees its name. A link changed after
        // the checks could lead elsewhere, but only for whoever may write the folder, who
        // may put any program there anyway.
        return Ok(Script {
            program: file.to_str().ok_or("not UTF-8")?.to_string(),
            name: decoded(named)?,
            path_info: decoded(rest)?,
        });
    }
    Err("a folder")
}

fn decoded(encoded: &str) -> Result<String, NotFound> {
    percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .map(|name| name.into_owned())
        .map_err(|_| "not UTF-8")
}

fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.is_file() && meta.permissions().mode() & 0o111 != 0
}

/// A folder for tests: `files` made executable (`x`) or not, folders made on the way.
#[cfg(test)]
fn folder(files: &[(&str, bool)]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "switchyard-script-dir-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    for (name, executable) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        let mode = if *executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_file_on_the_path_is_the_program_and_the_rest_its_path_info() {
        let dir = folder(&[("chat.sh", true), ("rooms/list", true), ("a b/é.sh", true)]);
        let at = |prefix: &str, path: &str| resolve(&dir, prefix, path);
        let program = |name: &str| format!("{}/{name}", dir.display());
        assert_eq!(
            at("/ws", "/ws/chat.sh"),
            Ok(Script {
                program: program("chat.sh"),
                name: "/ws/chat.sh".into(),
                path_info: String::new(),
            })
        );
        assert_eq!(
            at("/ws/", "/ws/chat.sh/room/1%20a"),
            Ok(Script {
                program: program("chat.sh"),
                name: "/ws/chat.sh".into(),
                path_info: "/room/1 a".into(),
            })
        );
        assert_eq!(
            at("/", "/rooms/list/"),
            Ok(Script {
                program: program("rooms/list"),
                name: "/rooms/list".into(),
                path_info: "/".into(),
            })
        );
        assert_eq!(
            at("/ws", "/ws/a%20b/%C3%A9.sh").map(|s| (s.program, s.name)),
            Ok((program("a b/é.sh"), "/ws/a b/é.sh".into()))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_program_for_folders_hidden_files_plain_files_links_out_and_neighbours() {
        let dir = folder(&[
            ("chat.sh", true),
            ("notes.txt", false),
            (".env", true),
            (".git/hooks/post-commit", true),
            ("sub/x", true),
        ]);
        std::os::unix::fs::symlink("/bin/sh", dir.join("shell")).unwrap();
        std::os::unix::fs::symlink("/usr/bin", dir.join("bin")).unwrap();
        std::os::unix::fs::symlink(dir.join("chat.sh"), dir.join("inside")).unwrap();
        std::os::unix::fs::symlink(dir.join(".git"), dir.join("git")).unwrap();
        std::os::unix::fs::symlink(dir.join(".env"), dir.join("env")).unwrap();
        let at = |path: &str| resolve(&dir, "/ws", path);
        for (path, why) in [
            ("/ws", "a folder"),
            ("/ws/", "a folder"),
            ("/ws/sub", "a folder"),
            ("/ws/sub//x", "an empty segment"),
            ("/wschat.sh", "no such program"),
            ("/ws/missing", "no such program"),
            ("/ws/notes.txt", "not an executable file"),
            ("/ws/.env", "a hidden file"),
            ("/ws/.git/hooks/post-commit", "a hidden file"),
            ("/ws/shell", "a symbolic link out of the folder"),
            ("/ws/bin/env", "a symbolic link out of the folder"),
            ("/ws/%FF", "not UTF-8"),
            ("/ws/git/hooks/post-commit", "a hidden file"),
            ("/ws/env", "a hidden file"),
        ] {
            assert_eq!(at(path), Err(why), "{path}");
        }
        assert_eq!(at("/ws/inside").map(|s| s.name), Ok("/ws/inside".into()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
