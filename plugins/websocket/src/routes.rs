//! `SWITCHYARD_WEBSOCKET_ROUTES`: which service a request path gets, by longest prefix:
//! `echo` (the default for every path when unset), a TCP service (`tcp://host:port`) or a
//! Unix socket service (`unix:/path`), as websockify bridges them: the payload of every
//! data message from the client goes to the service as bytes, and the service's bytes come
//! back as binary messages. A path no route covers is declined (the client gets `426`).
//!
//! Pure: parsing and lookup; dialling is [`crate::backend`]'s.

use std::path::PathBuf;

/// The service behind a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    Echo,
    Tcp(String),
    Unix(PathBuf),
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
            invalid("expected /path=tcp://host:port, /path=unix:/socket or /path=echo")
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
        } else if let Some(path) = service.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(invalid("a unix: backend must be an absolute path"));
            }
            Service::Unix(PathBuf::from(path))
        } else if service.starts_with("exec:") || service.starts_with("exec-binary:") {
            return Err(invalid(
                "exec: routes are not built yet; tcp://, unix: and echo are",
            ));
        } else {
            return Err(invalid(
                "unknown service; use tcp://host:port, unix:/path or echo",
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

/// The service for `path`: its longest routed prefix; every path is `echo` when there are
/// no routes at all; `None` (decline) when routes exist and none covers it.
pub fn service<'a>(routes: &'a [Route], path: &str) -> Option<&'a Service> {
    if routes.is_empty() {
        return Some(&Service::Echo);
    }
    routes
        .iter()
        .find(|r| path.starts_with(&r.prefix))
        .map(|r| &r.service)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn bad_routes_are_named() {
        for (value, why) in [
            ("/a=tcp://nowhere", "host:port"),
            ("/a=unix:relative.sock", "absolute"),
            ("/a=ftp://x:1", "unknown service"),
            ("a=echo", "start with /"),
            ("/a=echo,/a=echo", "twice"),
            ("/count=exec:/bin/count", "not built yet"),
        ] {
            let error = parse(value).unwrap_err();
            assert!(
                error.contains(why) && error.contains(ROUTES),
                "{value}: {error}"
            );
        }
    }
}
