//! Behind real nginx's `proxy_pass` (Debian's `nginx`; `.ci/run` installs it), which
//! cannot send the PROXY protocol: `SWITCHYARD_FORWARDED_FROM` makes each client the
//! address nginx appends to `X-Forwarded-For`, with a share of its own.

use crate::support::Daemon;
use crate::websocket_routes::script;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

/// nginx on a free port, proxying HTTP and WebSockets to `daemon` as its documentation's
/// WebSocket example does, with `X-Forwarded-For` appended.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(daemon: SocketAddr) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display();
        let config = dir.path().join("nginx.conf");
        let started = crate::support::spawn_on_free_port("Debian's nginx package", |addr| {
            std::fs::write(
                &config,
                format!(
                    "daemon off;\nmaster_process off;\npid {root}/nginx.pid;\n\
                     error_log {root}/error.log;\nevents {{}}\n\
                     http {{\n  access_log off;\n  client_body_temp_path {root}/body;\n  \
                     proxy_temp_path {root}/proxy;\n  fastcgi_temp_path {root}/fastcgi;\n  \
                     uwsgi_temp_path {root}/uwsgi;\n  scgi_temp_path {root}/scgi;\n  \
                     server {{\n    listen {addr};\n    location / {{\n      \
                     proxy_pass http://{daemon};\n      proxy_http_version 1.1;\n      \
                     proxy_set_header Upgrade $http_upgrade;\n      \
                     proxy_set_header Connection \"upgrade\";\n      \
                     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n    \
                     }}\n  }}\n}}\n"
                ),
            )
            .unwrap();
            let mut command = Command::new("nginx");
            command.arg("-e").arg(dir.path().join("error.log"));
            command.arg("-c").arg(&config);
            command
        });
        let Some((child, addr)) = started else {
            let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            panic!("nginx did not start: {log}");
        };
        Nginx {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Socket = tungstenite::WebSocket<TcpStream>;

/// A WebSocket to `path` through `nginx` from the local address `local`, the client
/// writing an `X-Forwarded-For` of its own (which must not be believed); the status
/// if the handshake is refused.
fn open_from(nginx: &Nginx, local: &str, path: &str) -> Result<Socket, u16> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&format!("{local}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.connect(&nginx.addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut request = format!("ws://{}{path}", nginx.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("X-Forwarded-For", "6.6.6.6".parse().unwrap());
    match tungstenite::client(request, stream) {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("{e}"),
    }
}

fn text(socket: &mut Socket) -> String {
    match socket.read().expect("a message") {
        Message::Text(text) => text.as_str().to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// An operator's review: behind nginx every client was nginx's one address, so all of
/// them shared one client's share (here 2 connections; by default 64 programs, 10 program
/// starts a second) and the access line and programs named nginx. With nginx listed, each
/// client is the address nginx took its request from: its program's `REMOTE_ADDR`, its
/// access line, its own share; what the client wrote in `X-Forwarded-For` is not believed.
#[test]
fn behind_nginx_each_client_is_its_own_address_with_its_own_share() {
    let dir = tempfile::tempdir().unwrap();
    let who = script(dir.path(), "who", "echo \"$REMOTE_ADDR\"; exec cat");
    let daemon = Daemon::builder()
        .plugin("switchyard-websocket")
        .env(
            "SWITCHYARD_WEBSOCKET_ROUTES",
            &format!("/who=exec:{}", who.display()),
        )
        .env("SWITCHYARD_FORWARDED_FROM", "127.0.0.1")
        .env("SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT", "2")
        .start();
    let nginx = Nginx::start(daemon.addr);
    let mut first = open_from(&nginx, "127.0.0.2", "/who").expect("the first");
    assert_eq!(text(&mut first), "127.0.0.2");
    let mut second = open_from(&nginx, "127.0.0.2", "/who").expect("the second");
    assert_eq!(text(&mut second), "127.0.0.2");
    assert_eq!(
        open_from(&nginx, "127.0.0.2", "/who").err(),
        Some(503),
        "a third of the same client's is past its share"
    );
    let logs = daemon.wait_for_log("127.0.0.2:0 \"GET /who HTTP/1.1\" 503");
    assert!(
        logs.is_ok(),
        "the refusal names its request: {}",
        logs.unwrap_or_else(|l| l)
    );
    let mut other = open_from(&nginx, "127.0.0.3", "/who").expect("another client's");
    assert_eq!(text(&mut other), "127.0.0.3");
    // Plain requests through nginx (whose own connections count against no client) are
    // served, and named as well.
    let mut plain = crate::support::Client::connect(nginx.addr);
    plain.send("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n");
    assert_eq!(plain.response().status, 200);
    first.close(None).unwrap();
    while first.read().is_ok() {}
    let logs = daemon.wait_for_log("127.0.0.2:0 \"GET /who HTTP/1.1\" 101");
    assert!(logs.is_ok(), "{}", logs.unwrap_or_else(|l| l));
    // From 127.0.0.1, nginx's own address: the client is the one before it in the list.
    let logs = daemon.wait_for_log("10.9.9.9:0 \"GET /healthz HTTP/1.1\" 200");
    assert!(logs.is_ok(), "{}", logs.unwrap_or_else(|l| l));
    let logs = daemon.logs();
    assert!(!logs.contains("6.6.6.6"), "the client's own word: {logs}");
}

/// Review of bee56ec: a proxy's connection kept alive between requests (nginx's `keepalive`
/// pool) went on counting against its last request's client, so a client with nothing
/// open was refused. Between requests it counts against the proxy's own address again.
/// Here two proxies (127.0.0.1 and 127.0.0.5, both listed), two connections each at most:
/// the first keeps two connections that each served 10.0.0.1, the second then asks for
/// 10.0.0.1 (503 before).
#[test]
fn a_kept_alive_proxy_connection_counts_against_the_proxy_between_requests() {
    let daemon = Daemon::builder()
        .env("SWITCHYARD_FORWARDED_FROM", "127.0.0.0/8")
        .env("SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT", "2")
        .start();
    let ask = |client: &mut crate::support::Client, who: &str| {
        client.send(format!(
            "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {who}\r\n\r\n"
        ));
        client.response().status
    };
    let mut pool: Vec<_> = (0..2).map(|_| daemon.client()).collect();
    for connection in &mut pool {
        assert_eq!(ask(connection, "10.0.0.1"), 200);
    }
    let mut other_proxy = daemon.client_from("127.0.0.5");
    assert_eq!(
        ask(&mut other_proxy, "10.0.0.1"),
        200,
        "10.0.0.1 has nothing open"
    );
    // The pooled connections serve on, and a proxy's own share still holds: a third
    // connection of 127.0.0.1's, while two wait, is past it.
    assert_eq!(ask(&mut pool[0], "10.0.0.2"), 200);
    let mut third = daemon.client();
    assert_eq!(ask(&mut third, "10.0.0.3"), 503);
}
