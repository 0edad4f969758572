//! Static files on the same port: the page that belongs to a WebSocket (noVNC's client, a
//! terminal's), served by `GET` and `HEAD` from folders the operator names
//! (`SWITCHYARD_STATIC_ROUTES`), so that page and socket share an origin. Not a general file
//! server: no listings, no uploads, no content negotiation.
//!
//! Pure decisions only (the daemon's `http1::files` opens and sends): which file a path
//! names ([`file_for`]), validators and conditional requests (RFC 9110 §8.8, §13), byte
//! ranges (RFC 9110 §14), and content types by extension.

use protocol_api::path::{PathError, RequestPath};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One route: requests whose normalised path starts with `prefix` are files under `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRoute {
    pub prefix: String,
    /// The folder, canonical (symbolic links resolved) when read at start.
    pub root: PathBuf,
}

/// Parses `SWITCHYARD_STATIC_ROUTES`: `/prefix=/folder` entries, comma-separated; the
/// routes come out longest prefix first. The folders are checked by the caller.
pub fn parse_routes(value: &str) -> Result<Vec<FileRoute>, String> {
    let mut routes: Vec<FileRoute> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (prefix, root) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?}: expected /path=/folder"))?;
        let (prefix, root) = (prefix.trim(), root.trim());
        if !prefix.starts_with('/') {
            return Err(format!("{entry:?}: the path must start with /"));
        }
        if !root.starts_with('/') {
            return Err(format!("{entry:?}: the folder must be an absolute path"));
        }
        if routes.iter().any(|r| r.prefix == prefix) {
            return Err(format!("{entry:?}: the path is routed twice"));
        }
        routes.push(FileRoute {
            prefix: prefix.to_string(),
            root: PathBuf::from(root),
        });
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    Ok(routes)
}

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
pub enum Named {
    /// No route covers it: the daemon answers as before (`426`).
    Unrouted,
    /// This file under this route's root (`index.html` for a folder's own path).
    File { route: usize, relative: PathBuf },
    /// A name the daemon will not serve (a dot-file or dot-folder: `.git`, `.env`).
    Hidden,
    /// Its dot-segments climbed out of a route, or it has a spelling servers disagree on.
    Refused(PathError),
}

/// The file `path` names among `routes` (longest prefix first).
pub fn file_for(routes: &[FileRoute], path: &RequestPath<'_>) -> Named {
    if let Err(e) = path.longest_prefix(routes, |r| &r.prefix) {
        return Named::Refused(e); // its dot-segments climbed out of a route
    }
    // A prefix covers whole segments only: `/app` covers `/app` and `/app/x`, not `/apple`.
    let covers = |prefix: &str| {
        path.path()
            .strip_prefix(prefix)
            .is_some_and(|rest| prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
    };
    let Some(index) = routes.iter().position(|r| covers(&r.prefix)) else {
        return Named::Unrouted;
    };
    let rest = &path.path()[routes[index].prefix.len()..];
    let mut relative = PathBuf::new();
    for segment in rest.split('/').filter(|s| !s.is_empty()) {
        let segment = decode_segment(segment);
        if segment.starts_with(b".") {
            return Named::Hidden;
        }
        relative.push(std::ffi::OsStr::from_bytes(&segment));
    }
    if path.path().ends_with('/') {
        relative.push("index.html");
    } else if rest.is_empty() {
        // The route's own folder, named without its slash: the folder itself, which the
        // opener sends the client to with its slash (301), as it does any folder.
        relative.push(".");
    }
    Named::File {
        route: index,
        relative,
    }
}

/// A path segment's name on disk: its `%XX` escapes decoded (RFC 3986 §2.1: `a%20b.html`
/// names `a b.html`); a `%` not followed by two hex digits stays as it is. The path parser
/// has refused the escapes that could change the path's shape (`%2F`, `%5C`, `%00`) and
/// decoded `%2E` already.
fn decode_segment(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let escaped = match bytes[at..] {
            [b'%', high, low, ..] => hex(high).zip(hex(low)),
            _ => None,
        };
        match escaped {
            Some((high, low)) => {
                out.push(high << 4 | low);
                at += 3;
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    out
}

/// A strong validator from what changes when the file does: its modification time (to the
/// nanosecond) and length, as nginx makes its `ETag`.
pub fn etag(modified: SystemTime, len: u64) -> String {
    let since = modified.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!(
        "\"{:x}.{:x}-{len:x}\"",
        since.as_secs(),
        since.subsec_nanos()
    )
}

/// RFC 9110 §13.1.2 and §13.1.3: whether a `GET`/`HEAD` is answered `304`. With
/// `If-None-Match`, only it decides (weak comparison, `*` for any); else
/// `If-Modified-Since`, to the second.
pub fn not_modified(
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
    etag: &str,
    modified: SystemTime,
) -> bool {
    if let Some(list) = if_none_match {
        let ours = etag.trim_start_matches("W/");
        return list
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.trim_start_matches("W/") == ours);
    }
    let Some(since) = if_modified_since.and_then(|d| httpdate::parse_http_date(d).ok()) else {
        return false;
    };
    let seconds = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    seconds(modified) <= seconds(since)
}

/// RFC 9110 §13.1.1 and §13.1.4: whether a request is answered `412`. With `If-Match`,
/// only it decides (strong comparison, `*` for any: the file exists); else
/// `If-Unmodified-Since`, to the second (a date that does not parse is ignored).
pub fn precondition_failed(
    if_match: Option<&str>,
    if_unmodified_since: Option<&str>,
    etag: &str,
    modified: SystemTime,
) -> bool {
    if let Some(list) = if_match {
        // A weak tag never matches strongly (§8.8.3.2).
        return !list
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag == etag);
    }
    let Some(since) = if_unmodified_since.and_then(|d| httpdate::parse_http_date(d).ok()) else {
        return false;
    };
    let seconds = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    seconds(modified) > seconds(since)
}

/// What a `Range` field asks of a file of `len` bytes (RFC 9110 §14.2).
#[derive(Debug, PartialEq, Eq)]
pub enum Ranged {
    /// The whole file (no `Range`, one that is not `bytes=`, several ranges, a syntax we
    /// do not read, or an `If-Range` that no longer matches): `200`.
    Whole,
    /// Bytes `start..end` (end exclusive): `206` with `Content-Range`.
    Part { start: u64, end: u64 },
    /// Nothing of it is in the file: `416` with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Reads `Range` for a file of `len` bytes; `if_range` is the request's `If-Range`, which
/// must name `etag` for the range to be served (RFC 9110 §13.1.5).
pub fn range(range: Option<&str>, if_range: Option<&str>, etag: &str, len: u64) -> Ranged {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Ranged::Whole;
    };
    if if_range.is_some_and(|tag| tag.trim() != etag) {
        return Ranged::Whole;
    }
    if spec.contains(',') || len == 0 {
        // Several ranges, or an empty file (a media element asks `bytes=0-` of any): the
        // whole file is a valid answer.
        return Ranged::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ranged::Whole;
    };
    // Digits past u64 are a position past any file: as large as a u64 goes.
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().unwrap_or(u64::MAX))
    };
    let (start, end) = match (number(first), number(last)) {
        // `-N`: the last N bytes.
        (None, Some(suffix)) if first.trim().is_empty() => {
            if suffix == 0 || len == 0 {
                return Ranged::Unsatisfiable;
            }
            (len.saturating_sub(suffix), len)
        }
        (Some(start), None) if last.trim().is_empty() => (start, len),
        (Some(start), Some(last)) if last >= start => (start, last.saturating_add(1).min(len)),
        _ => return Ranged::Whole, // not a range we read: ignored, as §14.2 allows
    };
    if start >= len {
        return Ranged::Unsatisfiable;
    }
    Ranged::Part { start, end }
}

/// The `Content-Type` of a file by its extension (what a page and its scripts need; the
/// rest is `application/octet-stream`).
pub fn content_type(relative: &std::path::Path) -> &'static str {
    let extension = relative
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("ico") => "image/x-icon",
        Some("webp") => "image/webp",
        Some("woff") => "font/woff",
        Some("woff2") => "font/woff2",
        Some("ttf") => "font/ttf",
        Some("wasm") => "application/wasm",
        Some("mp3") => "audio/mpeg",
        Some("oga" | "ogg") => "audio/ogg",
        Some("wav") => "audio/wav",
        Some("xml") => "application/xml",
        Some("pdf") => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// `Last-Modified`, to the second (RFC 9110 §8.8.2).
pub fn last_modified(modified: SystemTime) -> String {
    let seconds = modified
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn routes() -> Vec<FileRoute> {
        parse_routes("/=/srv/page, /docs=/srv/docs").unwrap()
    }

    fn named(target: &str) -> Named {
        file_for(&routes(), &RequestPath::parse(target).unwrap())
    }

    #[test]
    fn a_path_names_a_file_under_its_longest_route() {
        assert_eq!(
            named("/vnc.html?path=x"),
            Named::File {
                route: 1,
                relative: "vnc.html".into()
            }
        );
        assert_eq!(
            named("/docs/a/b.css"),
            Named::File {
                route: 0,
                relative: "a/b.css".into()
            }
        );
        // The route's own folder without its slash: the folder (the opener redirects).
        assert_eq!(
            named("/docs"),
            Named::File {
                route: 0,
                relative: ".".into()
            }
        );
        assert_eq!(
            named("/docs/"),
            Named::File {
                route: 0,
                relative: "index.html".into()
            }
        );
        // Escapes name the file's own bytes; a stray `%` is a character.
        assert_eq!(
            named("/a%20b.html"),
            Named::File {
                route: 1,
                relative: "a b.html".into()
            }
        );
        assert_eq!(
            named("/caf%C3%A9/100%/x%4"),
            Named::File {
                route: 1,
                relative: "café/100%/x%4".into()
            }
        );
        // A hidden name spelled with escapes is hidden (`%2E` is decoded by the parser).
        assert_eq!(named("/%2Egit/config"), Named::Hidden);
        assert_eq!(
            named("/app/"),
            Named::File {
                route: 1,
                relative: "app/index.html".into()
            }
        );
        // `/docsx` is not under `/docs`: the `/` route has it.
        assert_eq!(
            named("/docsx"),
            Named::File {
                route: 1,
                relative: "docsx".into()
            }
        );
    }

    #[test]
    fn no_escape_from_the_folder() {
        // Dot-segments are resolved before routing; climbing out of a route is refused,
        // and above the root the path parser refuses it already.
        assert!(matches!(named("/docs/../x"), Named::Refused(_)));
        assert!(matches!(named("/docs/%2e%2e/x"), Named::Refused(_)));
        assert!(RequestPath::parse("/docs/../../etc/passwd").is_err());
        // Encoded separators and backslashes are refused by the path parser itself.
        assert!(RequestPath::parse("/a%2f..%2fetc").is_err());
        assert!(RequestPath::parse("/a\\..\\etc").is_err());
        // Hidden names are not served.
        assert_eq!(named("/.git/config"), Named::Hidden);
        assert_eq!(named("/docs/.env"), Named::Hidden);
        let only_docs = parse_routes("/docs=/srv/docs").unwrap();
        let path = RequestPath::parse("/other").unwrap();
        assert_eq!(file_for(&only_docs, &path), Named::Unrouted);
    }

    #[test]
    fn rfc9110_13_conditional_requests() {
        let modified = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let tag = etag(modified, 42);
        let date = last_modified(modified);
        assert!(not_modified(Some(&tag), None, &tag, modified));
        assert!(not_modified(
            Some(&format!("W/{tag}")),
            None,
            &tag,
            modified
        ));
        assert!(not_modified(Some("\"x\", *"), None, &tag, modified));
        assert!(!not_modified(
            Some("\"other\""),
            Some(&date),
            &tag,
            modified
        ));
        assert!(not_modified(None, Some(&date), &tag, modified));
        let earlier = last_modified(modified - Duration::from_secs(1));
        assert!(!not_modified(None, Some(&earlier), &tag, modified));
        assert!(!not_modified(None, Some("not a date"), &tag, modified));
    }

    #[test]
    fn rfc9110_13_1_1_and_13_1_4_preconditions() {
        let modified = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let tag = etag(modified, 42);
        let failed = |if_match: Option<&str>, since: Option<&str>| {
            precondition_failed(if_match, since, &tag, modified)
        };
        assert!(!failed(None, None));
        assert!(!failed(Some(&tag), None));
        assert!(!failed(Some(&format!("\"x\", {tag}")), None));
        assert!(!failed(Some("*"), None));
        assert!(failed(Some("\"other\""), None));
        assert!(
            failed(Some(&format!("W/{tag}")), None),
            "weak never matches strongly"
        );
        let earlier = last_modified(modified - Duration::from_secs(1));
        assert!(failed(None, Some(&earlier)), "changed since");
        assert!(!failed(None, Some(&last_modified(modified))));
        assert!(!failed(None, Some("not a date")), "ignored");
        assert!(
            !failed(Some(&tag), Some(&earlier)),
            "If-Match alone decides"
        );
    }

    #[test]
    fn rfc9110_14_byte_ranges() {
        let tag = "\"t\"";
        let r = |spec: &str| range(Some(spec), None, tag, 100);
        assert_eq!(r("bytes=0-9"), Ranged::Part { start: 0, end: 10 });
        assert_eq!(
            r("bytes=90-"),
            Ranged::Part {
                start: 90,
                end: 100
            }
        );
        assert_eq!(
            r("bytes=-10"),
            Ranged::Part {
                start: 90,
                end: 100
            }
        );
        assert_eq!(r("bytes=-500"), Ranged::Part { start: 0, end: 100 });
        assert_eq!(
            r("bytes=50-5000"),
            Ranged::Part {
                start: 50,
                end: 100
            }
        );
        assert_eq!(r("bytes=100-"), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=-0"), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6"), Ranged::Whole);
        assert_eq!(r("bytes=9-0"), Ranged::Whole);
        assert_eq!(r("items=0-1"), Ranged::Whole);
        // Positions past u64 (an attacker's review found them 200, not 206 and 416).
        assert_eq!(
            r("bytes=0-99999999999999999999999"),
            Ranged::Part { start: 0, end: 100 }
        );
        assert_eq!(r("bytes=99999999999999999999-"), Ranged::Unsatisfiable);
        assert_eq!(
            r("bytes=-99999999999999999999"),
            Ranged::Part { start: 0, end: 100 }
        );
        assert_eq!(range(None, None, tag, 100), Ranged::Whole);
        assert_eq!(
            range(Some("bytes=0-9"), Some("\"old\""), tag, 100),
            Ranged::Whole
        );
        assert_eq!(
            range(Some("bytes=0-9"), Some(tag), tag, 100),
            Ranged::Part { start: 0, end: 10 }
        );
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(
            content_type(Path::new("vnc.html")),
            "text/html; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("app/ui.JS")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("x")), "application/octet-stream");
    }
}
