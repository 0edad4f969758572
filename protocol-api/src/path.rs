//! Request paths as routes must see them, pure: one spelling for each path, so that the
//! route a request is matched to and the path a service receives are the same thing.
//!
//! A route `/public/` meant to expose one folder of a backend is only as good as its
//! agreement with that backend on what a path is. `/public/../admin` starts with `/public/`
//! as text, and a backend that normalises serves `/admin`; `%2e%2e` is `..` to some
//! normalisers and not to others; `%2F` is a slash to some backends and a character of a
//! name to others. So every route of every reference plugin is matched on the path
//! [`RequestPath::parse`] gives, and that path is what is forwarded:
//!
//! - `%2E` (either case) is decoded to `.`: a dot is unreserved, and RFC 3986 §2.3 and
//!   §6.2.2.2 make the two spellings the same URI. No other escape is decoded.
//! - Dot-segments are removed as RFC 3986 §5.2.4 (`remove_dot_segments`) does; a `..` that
//!   would climb above `/` is refused ([`PathError::AboveRoot`]).
//! - The spellings normalisers disagree on are refused, never guessed: an encoded slash
//!   (`%2F`), a backslash (`\`, `%5C`: a separator on some servers) and an encoded NUL
//!   (`%00`) ([`PathError::Ambiguous`]).
//! - [`RequestPath::longest_prefix`] refuses a request whose path, as sent, lies under a
//!   routed prefix that its normalised path has climbed out of ([`PathError::ClimbsOut`]):
//!   `/public/../admin` is not served by the route for `/` when `/public/` is routed.
//!
//! Every refusal is a `400 Bad Request` ([`PathError::STATUS`]).
//!
//! ```
//! use protocol_api::path::{PathError, RequestPath};
//!
//! let routes = ["/public/", "/"];
//! let path = RequestPath::parse("/public/./css/../app.js?v=2").unwrap();
//! assert_eq!(path.path(), "/public/app.js");
//! assert_eq!(path.path_and_query(), "/public/app.js?v=2");
//! assert_eq!(path.longest_prefix(&routes, |r| r), Ok(Some(&"/public/")));
//!
//! let climbs = RequestPath::parse("/public/%2e%2e/admin").unwrap();
//! assert_eq!(climbs.path(), "/admin");
//! assert!(matches!(
//!     climbs.longest_prefix(&routes, |r| r),
//!     Err(PathError::ClimbsOut { .. })
//! ));
//! assert!(RequestPath::parse("/public%2F..%2Fadmin").is_err());
//! ```

use std::borrow::Cow;
use std::fmt;

/// Why a request path is refused. Each is a `400`: the client sent a path this server will
/// not guess the meaning of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// The target is neither origin-form (`/path?query`) nor absolute-form
    /// (`http://host/path`) (RFC 9112 §3.2).
    NotAPath,
    /// A spelling that servers and backends read differently: what it is, for the answer.
    Ambiguous(&'static str),
    /// `..` segments climb above `/`.
    AboveRoot,
    /// The path as sent lies under `prefix`, and its dot-segments climb out of it.
    ClimbsOut {
        /// The routed prefix the path climbs out of.
        prefix: String,
    },
}

impl PathError {
    /// The status every refusal gets (RFC 9110 §15.5.1).
    pub const STATUS: u16 = 400;
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::NotAPath => f.write_str("the request target is not a path"),
            PathError::Ambiguous(what) => write!(f, "the path holds {what}"),
            PathError::AboveRoot => f.write_str("the path climbs above /"),
            PathError::ClimbsOut { prefix } => {
                write!(f, "the path climbs out of the routed prefix {prefix}")
            }
        }
    }
}

impl std::error::Error for PathError {}

/// A request target's path, normalised, with its query as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath<'a> {
    /// The path as sent (from the first `/`, without the query).
    raw: &'a str,
    /// `raw` with `%2E` decoded (what a prefix is compared with as sent).
    dotted: Cow<'a, str>,
    path: Cow<'a, str>,
    query: Option<&'a str>,
}

impl<'a> RequestPath<'a> {
    /// Parses and normalises a request target (see the module docs).
    pub fn parse(target: &'a str) -> Result<RequestPath<'a>, PathError> {
        let (raw, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        let raw = origin_path(raw)?;
        if raw.contains('\\') {
            return Err(PathError::Ambiguous("a backslash"));
        }
        for (escape, what) in [
            ("%2f", "an encoded slash (%2F)"),
            ("%5c", "an encoded backslash (%5C)"),
            ("%00", "an encoded NUL (%00)"),
        ] {
            if contains_ignoring_case(raw, escape) {
                return Err(PathError::Ambiguous(what));
            }
        }
        let dotted = decode_dots(raw);
        let path = match remove_dot_segments(&dotted)? {
            // No escape and no dot-segment: the path is the target's.
            Cow::Borrowed(_) if matches!(dotted, Cow::Borrowed(_)) => Cow::Borrowed(raw),
            path => Cow::Owned(path.into_owned()),
        };
        Ok(RequestPath {
            raw,
            dotted,
            path,
            query,
        })
    }

    /// The normalised path: what routes match and what is forwarded.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query as sent, without its `?`.
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }

    /// The path as sent.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The normalised path and the query: the target to forward.
    pub fn path_and_query(&self) -> String {
        match self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.to_string(),
        }
    }

    /// The route whose prefix is the longest one the normalised path starts with, among
    /// `routes` ordered longest prefix first; `None` when none does. Refused
    /// ([`PathError::ClimbsOut`]) when the path as sent starts with a routed prefix that the
    /// normalised one does not: its dot-segments climbed out of that route.
    pub fn longest_prefix<'r, R>(
        &self,
        routes: &'r [R],
        prefix_of: impl Fn(&R) -> &str,
    ) -> Result<Option<&'r R>, PathError> {
        if let Some(left) = routes
            .iter()
            .map(&prefix_of)
            .find(|prefix| self.dotted.starts_with(*prefix) && !self.path.starts_with(*prefix))
        {
            return Err(PathError::ClimbsOut {
                prefix: left.to_string(),
            });
        }
        Ok(routes
            .iter()
            .find(|route| self.path.starts_with(prefix_of(route))))
    }

    /// The route whose path is exactly the normalised path; refused like
    /// [`longest_prefix`](Self::longest_prefix) when the path as sent names a route below
    /// which its dot-segments climbed (`/db/../other`).
    pub fn exact<'r, R>(
        &self,
        routes: &'r [R],
        path_of: impl Fn(&R) -> &str,
    ) -> Result<Option<&'r R>, PathError> {
        if let Some(left) = routes.iter().map(&path_of).find(|path| {
            let below = self.dotted.strip_prefix(*path);
            below.is_some_and(|rest| rest.starts_with('/')) && !self.path.starts_with(*path)
        }) {
            return Err(PathError::ClimbsOut {
                prefix: left.to_string(),
            });
        }
        Ok(routes.iter().find(|route| path_of(route) == self.path()))
    }
}

/// The path of an origin-form target, or of an absolute-form one (`http://host/path`,
/// RFC 9112 §3.2.2; an empty path there is `/`).
fn origin_path(target: &str) -> Result<&str, PathError> {
    if target.starts_with('/') {
        return Ok(target);
    }
    let Some((scheme, rest)) = target.split_once("://") else {
        return Err(PathError::NotAPath);
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return Err(PathError::NotAPath);
    }
    Ok(rest.find('/').map_or("/", |at| &rest[at..]))
}

fn contains_ignoring_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// `%2E` and `%2e` as `.`.
fn decode_dots(path: &str) -> Cow<'_, str> {
    if !contains_ignoring_case(path, "%2e") {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let escape = &rest[at..];
        // Bytes, not `str` slices: what follows a `%` may be any character.
        if escape
            .as_bytes()
            .get(..3)
            .is_some_and(|e| e.eq_ignore_ascii_case(b"%2e"))
        {
            out.push('.');
            rest = &escape[3..];
        } else {
            out.push('%');
            rest = &escape[1..];
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// RFC 3986 §5.2.4 for an absolute path (starting with `/`), segment by segment: `.` goes,
/// `..` takes the segment before it away; a `.` or `..` last leaves the path ending in `/`.
/// Borrowed when there is no dot-segment.
fn remove_dot_segments(path: &str) -> Result<Cow<'_, str>, PathError> {
    let is_dots = |s: &str| s == "." || s == "..";
    if !path.split('/').any(is_dots) {
        return Ok(Cow::Borrowed(path));
    }
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => {}
            ".." => {
                if kept.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            other => {
                kept.push(other);
                continue;
            }
        }
        if last {
            kept.push(""); // `/a/.` and `/a/b/..` end in a slash
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(target: &str) -> Result<String, PathError> {
        RequestPath::parse(target).map(|p| p.path_and_query())
    }

    #[test]
    fn rfc3986_5_2_4_dot_segments_are_removed() {
        for (target, expected) in [
            ("/", "/"),
            ("/a/b/c", "/a/b/c"),
            ("/a/./b", "/a/b"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/.", "/"),
            ("/./", "/"),
            ("/a//../b", "/a/b"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/a/..b/c.", "/a/..b/c."),
            ("/a/...", "/a/..."),
            ("/x?y=/../z", "/x?y=/../z"),
        ] {
            assert_eq!(normal(target).as_deref(), Ok(expected), "{target}");
        }
    }

    #[test]
    fn rfc3986_6_2_2_2_encoded_dots_are_dots() {
        assert_eq!(normal("/public/%2e%2e/admin").as_deref(), Ok("/admin"));
        assert_eq!(normal("/public/%2E./admin").as_deref(), Ok("/admin"));
        assert_eq!(normal("/a/%2e/b").as_deref(), Ok("/a/b"));
        assert_eq!(normal("/file%2Etxt").as_deref(), Ok("/file.txt"));
        assert_eq!(
            normal("/100%25/x").as_deref(),
            Ok("/100%25/x"),
            "other escapes stay"
        );
        assert_eq!(normal("/a%2").as_deref(), Ok("/a%2"));
        // Found by the request_path fuzz target: a `%` before a character of several bytes.
        assert_eq!(normal("/%é/%2e/x").as_deref(), Ok("/%é/x"));
        assert_eq!(normal("/%%é").as_deref(), Ok("/%%é"));
    }

    #[test]
    fn spellings_normalisers_disagree_on_are_refused() {
        for target in [
            "/public%2F..%2Fadmin",
            "/public%2f..",
            "/public\\..\\admin",
            "/a%5cb",
            "/a%00.txt",
        ] {
            assert!(
                matches!(normal(target), Err(PathError::Ambiguous(_))),
                "{target}: {:?}",
                normal(target)
            );
        }
        assert_eq!(normal("/.."), Err(PathError::AboveRoot));
        assert_eq!(normal("/a/../../b"), Err(PathError::AboveRoot));
        assert_eq!(normal("/%2e%2e/etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(normal("*"), Err(PathError::NotAPath));
        assert_eq!(normal("example.com:443"), Err(PathError::NotAPath));
    }

    #[test]
    fn rfc9112_3_2_2_absolute_form_gives_its_path() {
        assert_eq!(normal("http://example.com/a/../b?q").as_deref(), Ok("/b?q"));
        assert_eq!(normal("http://example.com").as_deref(), Ok("/"));
        assert_eq!(normal("ws://example.com:80/x").as_deref(), Ok("/x"));
    }

    #[test]
    fn an_unchanged_path_is_borrowed() {
        let path = RequestPath::parse("/a/b?c").unwrap();
        assert!(matches!(path.path, Cow::Borrowed(_)));
        assert_eq!(path.raw(), "/a/b");
        assert_eq!(path.query(), Some("c"));
    }

    #[test]
    fn a_path_that_climbs_out_of_its_route_is_refused() {
        let routes = ["/public/", "/api", "/"];
        let route = |target: &str| {
            RequestPath::parse(target)
                .and_then(|p| p.longest_prefix(&routes, |r| r).map(|r| r.copied()))
        };
        assert_eq!(route("/public/x"), Ok(Some("/public/")));
        assert_eq!(
            route("/public/a/../b"),
            Ok(Some("/public/")),
            "inside: fine"
        );
        assert_eq!(route("/other/../public/x"), Ok(Some("/public/")));
        assert_eq!(route("/api/v1"), Ok(Some("/api")));
        assert_eq!(route("/x"), Ok(Some("/")));
        for target in ["/public/../admin", "/public/%2e%2e/admin", "/api/.."] {
            assert!(
                matches!(route(target), Err(PathError::ClimbsOut { .. })),
                "{target}: {:?}",
                route(target)
            );
        }
        let only_public = ["/public/"];
        let path = RequestPath::parse("/public/../admin").unwrap();
        assert!(path.longest_prefix(&only_public, |r| r).is_err());
        let none: [&str; 0] = [];
        assert_eq!(path.longest_prefix(&none, |r| r), Ok(None));
    }

    #[test]
    fn exact_routes_match_the_normalised_path() {
        let routes = ["/db", "/cache"];
        let route = |target: &str| {
            RequestPath::parse(target).and_then(|p| p.exact(&routes, |r| r).map(|r| r.copied()))
        };
        assert_eq!(route("/db"), Ok(Some("/db")));
        assert_eq!(route("/x/../db"), Ok(Some("/db")));
        assert_eq!(route("/db/"), Ok(None));
        assert_eq!(route("/dbx"), Ok(None));
        assert!(matches!(
            route("/db/../cache"),
            Err(PathError::ClimbsOut { .. })
        ));
    }
}
