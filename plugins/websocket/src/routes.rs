//! `SWITCHYARD_WEBSOCKET_ROUTES`: which service a request path gets, by longest prefix:
//! `echo` (the default for every path when unset); a TCP service (`tcp://host:port`) or a
//! Unix socket service (`unix:/path`), as websockify bridges them: the payload of every
//! data message from the client goes to the service as bytes, and the service's bytes come
//! back as binary messages; or a program, as websocketd runs them (`exec:`; one for all of
//! the route's clients, `exec-shared:`; a folder of them, `exec-dir:`). A path no route
//! covers is declined (the client gets `426`).
//!
//! Pure: parsing and lookup; dialling is [`crate::backend`]'s.

use protocol_api::path::{PathError, RequestPath};
use std::path::PathBuf;

/// The service behind a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    Echo,
    Tcp(String),
    Unix(PathBuf),
    /// A program run per connection (websocketd's behaviour): `argv` from the route's
    /// words alone; text lines (`exec:`) or binary chunks (`exec-binary:`).
    Exec {
        argv: Vec<String>,
        binary: bool,
    },
    /// A folder of programs, each run per connection as `exec:` runs its one (websocketd's
    /// `--dir`): the request's path below the route names the program
    /// ([`crate::script_dir`]).
    ExecDir {
        dir: PathBuf,
        binary: bool,
    },
    /// A TCP or Unix service chosen per connection by a token, from websockify's
    /// TokenFile format in this file or folder ([`crate::tokens`]).
    Tokens(PathBuf),
    /// One program for all of the route's clients (`exec-shared:`, `exec-shared-binary:`):
    /// its output to every client, every client's messages to its input
    /// ([`crate::broadcast`]).
    Shared {
        argv: Vec<String>,
        binary: bool,
    },
}

/// A service as its route names it (`tcp://127.0.0.1:5900`, `exec:/usr/bin/count --step 2`),
/// for log lines.
impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let program = |kind: &str, argv: &[String]| format!("{kind}:{}", argv.join(" "));
        match self {
            Service::Echo => f.write_str("echo"),
            Service::Tcp(address) => write!(f, "tcp://{address}"),
            Service::Unix(path) => write!(f, "unix:{}", path.display()),
            Service::Exec { argv, binary } => {
                let kind = if *binary { "exec-binary" } else { "exec" };
                f.write_str(&program(kind, argv))
            }
            Service::ExecDir { dir, binary } => {
                let kind = if *binary {
                    "exec-dir-binary"
                } else {
                    "exec-dir"
                };
                write!(f, "{kind}:{}", dir.display())
            }
            Service::Tokens(path) => write!(f, "tokens:{}", path.display()),
            Service::Shared { argv, binary } => {
                let kind = if *binary {
                    "exec-shared-binary"
                } else {
                    "exec-shared"
                };
                f.write_str(&program(kind, argv))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    pub service: Service,
}

pub const ROUTES: &str = "SWITCHYARD_WEBSOCKET_ROUTES";

/// Parses the setting; routes come out longest prefix first.
pub fn parse(value: &str) -> Result<Vec<Route>, String> {
    let mut routes: Vec<Route> = Vec::new();
    for entry in protocol_api::fields::setting_list(value) {
        let invalid = |why: &str| format!("invalid {ROUTES} entry {entry:?}: {why}");
        let (prefix, service) = entry.split_once('=').ok_or_else(|| {
            invalid(
                "expected /path=SERVICE (tcp://host:port, unix:/socket, tokens:/file, \
                 exec:/program args, exec-dir:/folder, echo); routes are separated by commas, so an exec: \
                 program's arguments cannot hold one: run a script that holds them",
            )
        })?;
        let (prefix, service) = (prefix.trim(), service.trim());
        if !prefix.starts_with('/') {
            return Err(invalid("the path must start with /"));
        }
        let service = if service == "echo" {
            Service::Echo
        } else if let Some(address) = service.strip_prefix("tcp://") {
            let port = address
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            match port {
                Some((host, Ok(port))) if port > 0 && !host.is_empty() => {}
                _ => return Err(invalid("a tcp:// backend must be host:port")),
            }
            Service::Tcp(address.to_string())
        } else if let Some(source) = service.strip_prefix("tokens:") {
            if !source.starts_with('/') {
                return Err(invalid("a tokens: source must be an absolute path"));
            }
            Service::Tokens(PathBuf::from(source))
        } else if let Some(path) = service.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(invalid("a unix: backend must be an absolute path"));
            }
            Service::Unix(PathBuf::from(path))
        } else if let Some((binary, dir)) = [("exec-dir-binary:", true), ("exec-dir:", false)]
            .iter()
            .find_map(|(scheme, binary)| service.strip_prefix(scheme).map(|d| (*binary, d)))
        {
            if !dir.starts_with('/') {
                return Err(invalid("an exec-dir: folder must be an absolute path"));
            }
            match std::fs::metadata(dir) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(invalid(&format!("{dir} is not a folder"))),
                Err(e) => return Err(invalid(&format!("the folder {dir} cannot be used: {e}"))),
            }
            Service::ExecDir {
                dir: PathBuf::from(dir),
                binary,
            }
        } else if let Some((shared, binary, command)) = [
            ("exec-shared-binary:", true, true),
            ("exec-shared:", true, false),
            ("exec-binary:", false, true),
            ("exec:", false, false),
        ]
        .iter()
        .find_map(|(scheme, shared, binary)| {
            service.strip_prefix(scheme).map(|c| (*shared, *binary, c))
        }) {
            let argv: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
            let Some(program) = argv.first() else {
                return Err(invalid("exec: needs a program"));
            };
            // Words are split at spaces with no shell: quotes would reach the program as
            // they are (`'/tmp/my app.log'` as two arguments, quotes and all).
            if argv.iter().any(|word| word.contains(['\'', '"'])) {
                return Err(invalid(
                    "exec: arguments are split at spaces, with no shell: quotes are not \
                     understood; run a script that holds arguments with spaces or quotes",
                ));
            }
            if let Err(why) = executable(program) {
                return Err(invalid(&why));
            }
            match shared {
                true => Service::Shared { argv, binary },
                false => Service::Exec { argv, binary },
            }
        } else {
            return Err(invalid(
                "unknown service; use tcp://host:port, unix:/path, tokens:/path, exec:program, \
                 exec-dir:/folder or echo",
            ));
        };
        if routes.iter().any(|r| r.prefix == prefix) {
            return Err(invalid("the path is routed twice"));
        }
        routes.push(Route {
            prefix: prefix.to_string(),
            service,
        });
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    Ok(routes)
}

/// Whether `program` names an executable file: a path as given, or a name on `PATH`.
fn executable(program: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let is_executable = |path: &std::path::Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = std::path::Path::new(program);
        return match std::fs::metadata(path) {
            Err(e) => Err(format!("the program {program} cannot be used: {e}")),
            Ok(_) if !is_executable(path) => {
                Err(format!("the program {program} is not an executable file"))
            }
            Ok(_) => Ok(()),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    match std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program))) {
        true => Ok(()),
        false => Err(format!("no executable {program} on PATH")),
    }
}

/// The service for `path` (normalised, see [`protocol_api::path`]): its longest routed
/// prefix; every path is `echo` when there are no routes at all; `None` (decline) when
/// routes exist and none covers it; an error (`400`) when its dot-segments climb out of a
/// routed prefix.
/// The route a path takes (longest prefix), as [`service`]; `None` also when no routes are
/// set (every path is echo).
pub fn route<'a>(
    routes: &'a [Route],
    path: &RequestPath<'_>,
) -> Result<Option<&'a Route>, PathError> {
    path.longest_prefix(routes, |r| &r.prefix)
}

pub fn service<'a>(
    routes: &'a [Route],
    path: &RequestPath<'_>,
) -> Result<Option<&'a Service>, PathError> {
    if routes.is_empty() {
        return Ok(Some(&Service::Echo));
    }
    Ok(path
        .longest_prefix(routes, |r| &r.prefix)?
        .map(|r| &r.service))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service<'a>(routes: &'a [Route], path: &str) -> Option<&'a Service> {
        super::service(routes, &RequestPath::parse(path).unwrap()).unwrap()
    }

    #[test]
    fn a_path_that_climbs_out_of_its_route_is_refused() {
        let routes = parse("/public/=tcp://127.0.0.1:1,/=echo").unwrap();
        let route = |p: &str| super::service(&routes, &RequestPath::parse(p).unwrap());
        assert!(route("/public/../admin").is_err());
        assert!(route("/public/%2e%2e/admin").is_err());
        assert_eq!(
            route("/public/a/../b"),
            Ok(Some(&Service::Tcp("127.0.0.1:1".into())))
        );
    }

    #[test]
    fn longest_prefix_wins_and_unrouted_paths_are_declined() {
        let routes =
            parse("/vnc=tcp://127.0.0.1:5900, /logs=unix:/run/logs.sock,/vnc/admin=echo").unwrap();
        assert_eq!(
            service(&routes, "/vnc/1"),
            Some(&Service::Tcp("127.0.0.1:5900".into()))
        );
        assert_eq!(service(&routes, "/vnc/admin/x"), Some(&Service::Echo));
        assert_eq!(
            service(&routes, "/logs"),
            Some(&Service::Unix("/run/logs.sock".into()))
        );
        assert_eq!(service(&routes, "/other"), None);
        assert_eq!(
            service(&[], "/anything"),
            Some(&Service::Echo),
            "unset: echo"
        );
        let routes = parse("/count=exec:/bin/sh -c  x$1, /raw=exec-binary:cat").unwrap();
        assert_eq!(
            service(&routes, "/count"),
            Some(&Service::Exec {
                argv: vec!["/bin/sh".into(), "-c".into(), "x$1".into()],
                binary: false
            }),
            "words, never a shell's parsing"
        );
        assert_eq!(
            service(&routes, "/raw"),
            Some(&Service::Exec {
                argv: vec!["cat".into()],
                binary: true
            })
        );
    }

    #[test]
    fn a_program_that_is_not_executable_is_named() {
        let file =
            std::env::temp_dir().join(format!("switchyard-not-a-program-{}", std::process::id()));
        std::fs::write(&file, "data").unwrap();
        let error = parse(&format!("/x=exec:{}", file.display())).unwrap_err();
        std::fs::remove_file(&file).unwrap();
        assert!(error.contains("not an executable"), "{error}");
    }

    #[test]
    fn bad_routes_are_named() {
        for (value, why) in [
            ("/a=tcp://nowhere", "host:port"),
            ("/a=unix:relative.sock", "absolute"),
            ("/a=ftp://x:1", "unknown service"),
            ("a=echo", "start with /"),
            ("/a=echo,/a=echo", "twice"),
            ("/count=exec:/no/such/program", "cannot be used"),
            ("/count=exec:no-such-program-here", "on PATH"),
            ("/count=exec:", "needs a program"),
            ("/ws=exec-dir:scripts", "absolute"),
            ("/ws=exec-dir:/no/such/folder", "cannot be used"),
            ("/ws=exec-dir:/bin/sh", "not a folder"),
            // Review of run 22: quotes reached the program as they were.
            ("/log=exec:/bin/cat '/tmp/my app.log'", "no shell"),
            ("/log=exec:/bin/cat -F \"x y\"", "no shell"),
            // A comma in an argument cuts the route in two: the second half is named.
            ("/x=exec:/bin/echo a,b", "separated by commas"),
        ] {
            let error = parse(value).unwrap_err();
            assert!(
                error.contains(why) && error.contains(ROUTES),
                "{value}: {error}"
            );
        }
    }
}
