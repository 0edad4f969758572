//! The environment of a program behind an `exec:` route: CGI/1.1's variables (RFC 3875
//! §4.1) as websocketd gives them, pure.
//!
//! What a client sends must never become what the program obeys:
//! - `Proxy: ...` would become `HTTP_PROXY`, which many HTTP client libraries take as their
//!   proxy ("httpoxy", CVE-2016-5385): never passed.
//! - Header names with anything but letters, digits and `-` are dropped, as nginx and Apache
//!   do, so `X_User: admin` cannot become the `HTTP_X_USER` of `X-User: alice`; fields
//!   sent twice are joined with `, ` (§4.1.18).
//! - The daemon's own environment (its secrets among it) is not passed, but for the
//!   variables the operator names (`SWITCHYARD_WEBSOCKET_PASSENV`, websocketd's
//!   `--passenv`; `PATH` and `LD_LIBRARY_PATH` by default).
//! - The request's variables (`REMOTE_ADDR`, `PATH_INFO`...) come last: neither a header
//!   nor a passed variable can change them. Nor the TLS ones (`HTTPS`, `SSL_CLIENT_S_DN`,
//!   `SSL_CLIENT_VERIFY`...): set from the daemon's handshake, or removed.

use protocol_api::path::RequestPath;
use protocol_api::Request;
use std::collections::BTreeMap;
use std::ffi::OsString;

/// `PATH_INFO`: decoded (RFC 3875 §4.1.5), as websocketd gives it; the path has no `%2F`
/// nor `%00` (refused before). The script is the whole route (its name is empty,
/// §4.1.13), or an `exec-dir:` folder's program, named by the path up to it.
fn path_info(path: &RequestPath<'_>, script: Option<&crate::script_dir::Script>) -> Vec<u8> {
    match script {
        Some(script) => script.path_info.as_bytes().to_vec(),
        None => percent_encoding::percent_decode_str(path.path()).collect(),
    }
}

/// Why a request's path cannot be given to a program (`PATH_INFO` is a part of it,
/// decoded): decoded, it is not UTF-8 or holds a character that breaks a line or drives a
/// terminal. A `%0A` would be a newline in what a script logs, writes into a header or
/// splits into lines (Apache's `mod_cgi` and websocketd hand it on); `%C2%85` (NEL) and
/// U+2028/2029 split lines for Python's `splitlines`, C1 controls (`%C2%9B`, or a raw
/// `%9B`) are escapes to 8-bit terminals. No browser's path holds one. Refused with `400`
/// before anything starts; looked at on the event loop, with no worker's hop.
pub fn refused_path(path: &RequestPath<'_>) -> Option<&'static str> {
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(path.path()).collect();
    let Ok(text) = std::str::from_utf8(&decoded) else {
        return Some("a decoded path that is not UTF-8");
    };
    text.chars()
        .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
        .then_some("a control character in the decoded path")
}

/// The variables, by name. `daemon_env` looks up the daemon's environment.
pub fn environment(
    request: &Request<'_>,
    path: &RequestPath<'_>,
    script: Option<&crate::script_dir::Script>,
    passenv: &[String],
    daemon_env: impl Fn(&str) -> Option<OsString>,
) -> BTreeMap<String, OsString> {
    let mut env: BTreeMap<String, OsString> = BTreeMap::new();
    for (name, value) in request.headers() {
        let Some(variable) = header_variable(name) else {
            continue;
        };
        let value = String::from_utf8_lossy(value);
        match env.get_mut(&variable) {
            Some(earlier) => {
                earlier.push(", ");
                earlier.push(&*value);
            }
            None => {
                env.insert(variable, value.into_owned().into());
            }
        }
    }
    for name in passenv {
        if let Some(value) = daemon_env(name) {
            env.insert(name.clone(), value);
        }
    }
    let (address, port) = request
        .peer()
        .rsplit_once(':')
        .unwrap_or((request.peer(), ""));
    let query = path.query().unwrap_or("");
    let (server_name, server_port) = server_of(request);
    let script_name = script.map_or("", |script| script.name.as_str());
    env.insert(
        "PATH_INFO".into(),
        std::os::unix::ffi::OsStringExt::from_vec(path_info(path, script)),
    );
    for (name, value) in [
        ("REMOTE_ADDR", address.trim_matches(['[', ']'])),
        ("REMOTE_PORT", port),
        ("REQUEST_METHOD", request.method()),
        ("REQUEST_URI", &path.path_and_query()),
        ("SCRIPT_NAME", script_name),
        ("SERVER_NAME", &server_name),
        ("SERVER_PORT", &server_port),
        ("QUERY_STRING", query),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        (
            "SERVER_SOFTWARE",
            concat!("switchyard/", env!("CARGO_PKG_VERSION")),
        ),
        ("GATEWAY_INTERFACE", "websocketd-CGI/0.1"),
    ] {
        env.insert(name.to_string(), value.into());
    }
    // Over TLS, what Apache's mod_ssl and websocketd (`--ssl`) tell CGI programs.
    if let Some(tls) = request.tls() {
        let verify = match tls.client_subject {
            Some(_) => "SUCCESS",
            None => "NONE",
        };
        for (name, value) in [
            ("HTTPS", Some("on")),
            ("SSL_PROTOCOL", Some(tls.version)),
            ("SSL_CIPHER", Some(tls.cipher)),
            ("SSL_TLS_SNI", tls.server_name),
            ("SSL_CLIENT_VERIFY", Some(verify)),
            ("SSL_CLIENT_S_DN", tls.client_subject),
        ] {
            match value {
                Some(value) => env.insert(name.to_string(), value.into()),
                // Never one a header or the daemon's environment put there.
                None => env.remove(name),
            };
        }
    } else {
        for name in ["HTTPS", "SSL_CLIENT_VERIFY", "SSL_CLIENT_S_DN"] {
            env.remove(name);
        }
    }
    env
}

/// `SERVER_NAME` and `SERVER_PORT` (RFC 3875 §4.1.14-15) from the request's `Host`, as
/// websocketd and Apache give them: the port its default (80, or 443 over TLS) when the
/// `Host` names none.
fn server_of(request: &Request<'_>) -> (String, String) {
    let host = request
        .header("host")
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let host = host.trim();
    let default_port = match request.tls() {
        Some(_) => "443",
        None => "80",
    };
    // `[::1]:8080`, `[::1]`, `name:8080`, `name`.
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port))
            if !port.contains(']') && (!name.contains(':') || name.ends_with(']')) =>
        {
            (name, port)
        }
        _ => (host, default_port),
    };
    // A port is digits (`Host: a:1 2` is no port): else the scheme's.
    let port = match !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        true => port,
        false => default_port,
    };
    (name.trim_matches(['[', ']']).to_string(), port.to_string())
}

/// `HTTP_` and the field name upper-cased with `-` as `_`; `None` for names CGI must not
/// pass (see the module docs).
fn header_variable(name: &str) -> Option<String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    if name.eq_ignore_ascii_case("proxy") {
        return None;
    }
    Some(format!(
        "HTTP_{}",
        name.to_ascii_uppercase().replace('-', "_")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol_api::testing::TestRequest;

    fn env_of(request: &TestRequest, passenv: &[&str]) -> BTreeMap<String, OsString> {
        let passenv: Vec<String> = passenv.iter().map(|s| s.to_string()).collect();
        request.with(|request| {
            let path = RequestPath::parse(request.target()).unwrap();
            environment(request, &path, None, &passenv, |name| match name {
                "PATH" => Some("/usr/bin:/bin".into()),
                "DATABASE_PASSWORD" => Some("hunter2".into()),
                "REMOTE_ADDR" => Some("10.9.9.9".into()),
                _ => None,
            })
        })
    }

    fn get<'a>(env: &'a BTreeMap<String, OsString>, name: &str) -> Option<&'a str> {
        env.get(name).and_then(|v| v.to_str())
    }

    #[test]
    fn rfc3875_4_1_18_httpoxy_and_underscored_names_never_pass() {
        let request = TestRequest::get("/count/./x?n=1")
            .header("Proxy", "http://evil.example:3128")
            .header("X-User", "alice")
            .header("X_User", "admin")
            .header("Accept", "a")
            .header("accept", "b");
        let env = env_of(&request, &["PATH"]);
        assert_eq!(get(&env, "HTTP_PROXY"), None, "httpoxy");
        assert_eq!(get(&env, "HTTP_X_USER"), Some("alice"));
        assert_eq!(get(&env, "HTTP_ACCEPT"), Some("a, b"), "§4.1.18 joined");
        assert_eq!(get(&env, "HTTP_HOST"), Some("test"));
        assert_eq!(get(&env, "PATH_INFO"), Some("/count/x"), "the routed path");
        assert_eq!(get(&env, "REQUEST_URI"), Some("/count/x?n=1"));
        assert_eq!(get(&env, "QUERY_STRING"), Some("n=1"));
        assert_eq!(get(&env, "REMOTE_ADDR"), Some("127.0.0.1"));
        assert_eq!(get(&env, "REMOTE_PORT"), Some("40000"));
        assert_eq!(get(&env, "SERVER_PROTOCOL"), Some("HTTP/1.1"));
        assert_eq!(get(&env, "SERVER_NAME"), Some("test"));
        assert_eq!(get(&env, "SERVER_PORT"), Some("80"));
        assert_eq!(get(&env, "SCRIPT_NAME"), Some(""));
    }

    /// An `exec-dir:` program is named by the path up to it; `PATH_INFO` is what follows.
    #[test]
    fn rfc3875_4_1_13_an_exec_dir_program_has_its_script_name() {
        let script = crate::script_dir::Script {
            program: "/srv/ws/chat.sh".into(),
            name: "/ws/chat.sh".into(),
            path_info: "/room 1".into(),
        };
        let env = TestRequest::get("/ws/chat.sh/room%201?x=1").with(|request| {
            let path = RequestPath::parse(request.target()).unwrap();
            environment(request, &path, Some(&script), &[], |_| None)
        });
        assert_eq!(get(&env, "SCRIPT_NAME"), Some("/ws/chat.sh"));
        assert_eq!(get(&env, "PATH_INFO"), Some("/room 1"));
        assert_eq!(get(&env, "REQUEST_URI"), Some("/ws/chat.sh/room%201?x=1"));
    }

    #[test]
    fn a_decoded_path_with_a_control_character_is_refused() {
        for (target, refused) in [
            ("/count/x%0Ay", true),
            ("/count/x%0dy", true),
            ("/count/%1b[31m", true),
            ("/count/x%7F", true),
            ("/count/x%C2%85", true),    // NEL
            ("/count/x%C2%9B", true),    // CSI
            ("/count/x%E2%80%A8", true), // LINE SEPARATOR
            ("/count/x%9B", true),       // not UTF-8
            ("/count/x%C0%8A", true),    // an overlong newline: not UTF-8
            ("/count/a%20b/%C3%A9", false),
            ("/count/x?y=%0A", false), // the query is QUERY_STRING, as sent
        ] {
            let path = RequestPath::parse(target).unwrap();
            assert_eq!(refused_path(&path).is_some(), refused, "{target}");
        }
    }

    /// Review of run 22: PATH_INFO was left percent-encoded, and SERVER_NAME, SERVER_PORT
    /// and SCRIPT_NAME (RFC 3875's MUSTs, websocketd's) were not given.
    #[test]
    fn rfc3875_4_1_5_path_info_is_decoded_and_the_server_is_named() {
        let request = TestRequest::get("/env/a%20b/%C3%A9?q=%20").header("Host", "ws.example:8080");
        let env = env_of(&request, &[]);
        assert_eq!(get(&env, "PATH_INFO"), Some("/env/a b/é"));
        assert_eq!(get(&env, "REQUEST_URI"), Some("/env/a%20b/%C3%A9?q=%20"));
        assert_eq!(get(&env, "QUERY_STRING"), Some("q=%20"), "as sent");
        assert_eq!(get(&env, "SERVER_NAME"), Some("ws.example"));
        assert_eq!(get(&env, "SERVER_PORT"), Some("8080"));
        for (host, name, port) in [
            ("[::1]:9000", "::1", "9000"),
            ("[::1]", "::1", "80"),
            ("a:1 2", "a", "80"),
            ("a:", "a", "80"),
        ] {
            let env = env_of(&TestRequest::get("/").header("Host", host), &[]);
            assert_eq!(get(&env, "SERVER_NAME"), Some(name), "{host}");
            assert_eq!(get(&env, "SERVER_PORT"), Some(port), "{host}");
        }
    }

    #[test]
    fn only_the_named_part_of_the_daemons_environment_passes() {
        let request = TestRequest::get("/x");
        let env = env_of(&request, &["PATH"]);
        assert_eq!(get(&env, "PATH"), Some("/usr/bin:/bin"));
        assert_eq!(get(&env, "DATABASE_PASSWORD"), None);
        let env = env_of(&request, &["PATH", "DATABASE_PASSWORD", "REMOTE_ADDR"]);
        assert_eq!(
            get(&env, "DATABASE_PASSWORD"),
            Some("hunter2"),
            "named: passed"
        );
        assert_eq!(
            get(&env, "REMOTE_ADDR"),
            Some("127.0.0.1"),
            "the request's own variables win"
        );
    }
}
