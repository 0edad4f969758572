//! The h2c plugin's proxying, per stream, with the `h2` crate as the client and as the
//! HTTP/2 backend (the field's HTTP/2 implementation, hyper's own): statuses per stream
//! while the connection's other streams go on, trailers both ways, resets both ways,
//! GOAWAY on stop, the header list limit, the streams limit, pooled backend connections,
//! and the client's address through the PROXY protocol. (The same against Python's h2,
//! curl, nghttp and gRPC: tests/h2c/run.sh.)

use crate::support::{listener_never_answering, Daemon};
use bytes::Bytes;
use h2::{client, server, Reason};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Runs `body` on a runtime of the test's own.
pub(crate) fn run<F: std::future::Future>(body: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(body)
}

/// What the backend saw, for the tests to look at.
#[derive(Default)]
pub(crate) struct Seen {
    connections: AtomicUsize,
    /// Streams the client reset, by path.
    pub(crate) resets: Mutex<Vec<String>>,
    /// The `x-forwarded-for` of each request.
    forwarded_for: Mutex<Vec<String>>,
    /// The `forwarded` of each request.
    forwarded: Mutex<Vec<String>>,
    /// The `x-real-ip` (or `x_real_ip`) of each request.
    real_ip: Mutex<Vec<String>>,
    /// The `x-t-*` and `authorization` fields of each request.
    fields: Mutex<Vec<Vec<(String, String)>>>,
}

/// An HTTP/2 backend (prior knowledge, as gRPC services are): `/echo` sends the body back
/// with the request's trailers and one of its own; `/reset` resets the stream; `/hold`
/// answers after 1 s; `/large` answers 1 MiB; `/count` the length of the body it read;
/// `/interleaved/N` a 103, an answer and trailers; anything else answers `200` with its path.
pub(crate) async fn backend(seen: Arc<Seen>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            seen.connections.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((request, respond))) = connection.accept().await {
                    tokio::spawn(serve(request, respond, seen.clone()));
                }
            });
        }
    });
    addr
}

async fn serve(
    request: Request<h2::RecvStream>,
    mut respond: server::SendResponse<Bytes>,
    seen: Arc<Seen>,
) {
    let path = request.uri().path().to_string();
    if let Some(v) = request.headers().get("x-forwarded-for") {
        seen.forwarded_for
            .lock()
            .unwrap()
            .push(v.to_str().unwrap().to_string());
    }
    if let Some(v) = request.headers().get("forwarded") {
        seen.forwarded
            .lock()
            .unwrap()
            .push(v.to_str().unwrap().to_string());
    }
    let fields: Vec<(String, String)> = (request.headers().iter())
        .filter(|(n, _)| n.as_str().starts_with("x-t-") || n.as_str() == "authorization")
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    if !fields.is_empty() {
        seen.fields.lock().unwrap().push(fields);
    }
    let real_ip = ["x-real-ip", "x_real_ip"].map(|n| request.headers().get_all(n));
    for v in real_ip.iter().flatten() {
        seen.real_ip
            .lock()
            .unwrap()
            .push(v.to_str().unwrap().to_string());
    }
    let (parts, mut body) = request.into_parts();
    let request_fields = parts.headers;
    match path.as_str() {
        "/reset" => respond.send_reset(Reason::INTERNAL_ERROR),
        "/reset-mid-body" => {
            let mut send = respond.send_response(Response::new(()), false).unwrap();
            send.send_data(Bytes::from_static(b"partial"), false)
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            send.send_reset(Reason::INTERNAL_ERROR);
        }
        "/echo" => {
            let mut received = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                received.extend_from_slice(&chunk);
            }
            let mut trailers = body.trailers().await.unwrap().unwrap_or_default();
            trailers.insert("x-backend", HeaderValue::from_static("done"));
            let mut send = respond.send_response(Response::new(()), false).unwrap();
            send.send_data(Bytes::from(received), false).unwrap();
            send.send_trailers(trailers).unwrap();
        }
        "/count" => {
            // Reads the body, then answers its length.
            let mut len = 0;
            while let Some(chunk) = body.data().await {
                let Ok(chunk) = chunk else {
                    return; // reset
                };
                let _ = body.flow_control().release_capacity(chunk.len());
                len += chunk.len();
            }
            let mut send = respond.send_response(Response::new(()), false).unwrap();
            let _ = send.send_data(Bytes::from(len.to_string()), true);
        }
        "/large" => {
            // 1 MiB, sent as the windows allow.
            let mut send = respond.send_response(Response::new(()), false).unwrap();
            let _ = send.send_data(Bytes::from(vec![b'l'; 1 << 20]), true);
            let _ = std::future::poll_fn(|cx| send.poll_reset(cx)).await;
        }
        "/wait-for-reset" => {
            // Answers nothing; notes the reset the client's reset becomes.
            let reason = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
            if reason.is_ok() {
                seen.resets.lock().unwrap().push(path);
            }
        }
        interleaved if interleaved.starts_with("/interleaved/") => {
            // A 103, then the answer and its trailers, the even streams with a body
            // larger than the client's window, the later streams sooner: the streams'
            // blocks meet in every order.
            let i: u64 = interleaved["/interleaved/".len()..].parse().unwrap();
            if i % 4 == 3 {
                // This one's 103 after the others' trailers wait in the relay.
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            let hint = Response::builder()
                .status(StatusCode::EARLY_HINTS)
                .header("link", format!("</s{i}.css>; rel=preload"))
                .header("x-t-same", "same")
                .body(())
                .unwrap();
            respond.send_informational(hint).unwrap();
            tokio::time::sleep(Duration::from_millis(3 * (8 - i % 8))).await;
            let head = Response::builder()
                .header("x-t-answer", format!("a{i}"))
                .header("x-t-same", "same")
                .body(())
                .unwrap();
            let mut send = respond.send_response(head, false).unwrap();
            let len = if i.is_multiple_of(2) { 40_000 } else { 100 };
            send.send_data(Bytes::from(vec![b'd'; len]), false).unwrap();
            let mut trailers = HeaderMap::new();
            trailers.insert("x-t-trailer", format!("t{i}").parse().unwrap());
            trailers.insert("x-t-same", HeaderValue::from_static("same"));
            let _ = send.send_trailers(trailers);
        }
        fields if fields.starts_with("/fields/") => {
            // Answers with the request's `x-t-*` fields.
            let mut response = Response::new(());
            for (name, value) in &request_fields {
                if name.as_str().starts_with("x-t-") {
                    response.headers_mut().append(name, value.clone());
                }
            }
            let _ = respond.send_response(response, true);
        }
        other => {
            if other == "/hold" {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // A stream the client reset meanwhile takes no answer.
            if let Ok(mut send) = respond.send_response(Response::new(()), false) {
                let _ = send.send_data(Bytes::from(other.to_string()), true);
            }
        }
    }
}

/// A daemon with the h2c plugin and `routes`, and `extra` settings.
pub(crate) fn daemon(routes: &str, extra: &[(&str, &str)]) -> Daemon {
    let mut builder = Daemon::builder()
        .plugin("switchyard-h2c")
        .env("SWITCHYARD_H2C_ROUTES", routes);
    for (name, value) in extra {
        builder = builder.env(name, value);
    }
    builder.start()
}

/// An HTTP/2 client connection to the daemon, with prior knowledge.
pub(crate) async fn connect(addr: SocketAddr) -> client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// Sends `request` with no body; its answer's head.
pub(crate) async fn answer(
    send: &client::SendRequest<Bytes>,
    request: Request<()>,
) -> Response<h2::RecvStream> {
    let (response, _) = (send.clone().ready().await.unwrap())
        .send_request(request, true)
        .unwrap();
    response.await.unwrap()
}

/// `GET path`: the status and the body.
pub(crate) async fn get(send: &client::SendRequest<Bytes>, path: &str) -> (StatusCode, String) {
    let request = Request::get(format!("http://t{path}")).body(()).unwrap();
    let (response, _) = send
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(request, true)
        .unwrap();
    let response = response.await.unwrap();
    let status = response.status();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

/// RFC 9113 §5.1: streams are independent. On one connection at once: a routed stream
/// answered, one with no route `404`, one whose backend refuses `502`, one whose backend
/// does not connect in time `504`; and the connection serves on.
#[test]
fn each_stream_gets_its_own_status_and_the_others_go_on() {
    run(async {
        let seen = Arc::new(Seen::default());
        let backend = backend(seen.clone()).await;
        let refused = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap() // closed when dropped: refused
        };
        let (_listener, never, _fillers) = listener_never_answering();
        let daemon = daemon(
            &format!("/ok/={backend},/refused/={refused},/slow/={never}"),
            &[("SWITCHYARD_H2C_CONNECT_TIMEOUT_MS", "300")],
        );
        let send = connect(daemon.addr).await;
        let (ok, none, bad, slow) = tokio::join!(
            get(&send, "/ok/x"),
            get(&send, "/elsewhere"),
            get(&send, "/refused/x"),
            get(&send, "/slow/x"),
        );
        assert_eq!(ok, (StatusCode::OK, "/ok/x".to_string()));
        assert_eq!(none.0, StatusCode::NOT_FOUND);
        assert_eq!(bad.0, StatusCode::BAD_GATEWAY);
        assert_eq!(slow.0, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(get(&send, "/ok/again").await.0, StatusCode::OK, "serves on");
        // What the plugin counted of it, per route (issue 24).
        for line in [
            "switchyard_h2c_open_connections 1",
            "switchyard_h2c_streams_total{route=\"/ok/\"} 2",
            "switchyard_h2c_streams_total{route=\"-\"} 1",
            "switchyard_h2c_streams_total{route=\"/refused/\"} 1",
            "switchyard_h2c_responses_total{route=\"/ok/\",class=\"2xx\"} 2",
            "switchyard_h2c_responses_total{route=\"-\",class=\"4xx\"} 1",
            "switchyard_h2c_responses_total{route=\"/refused/\",class=\"5xx\"} 1",
            "switchyard_h2c_responses_total{route=\"/slow/\",class=\"5xx\"} 1",
            "switchyard_h2c_backend_response_seconds_count{route=\"/ok/\"} 2",
        ] {
            daemon
                .wait_for_metric(line)
                .unwrap_or_else(|text| panic!("no {line} in\n{text}"));
        }
    });
}

/// Trailers pass both ways untouched (gRPC's status travels in them), and the body whole.
#[test]
fn trailers_and_bodies_pass_both_ways() {
    run(async {
        let seen = Arc::new(Seen::default());
        let backend = backend(seen.clone()).await;
        let daemon = daemon(&format!("/={backend}"), &[]);
        let send = connect(daemon.addr).await;
        let request = Request::post("http://t/echo").body(()).unwrap();
        let (response, mut upload) = send
            .ready()
            .await
            .unwrap()
            .send_request(request, false)
            .unwrap();
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        upload.reserve_capacity(payload.len());
        upload
            .send_data(Bytes::from(payload.clone()), false)
            .unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-client", HeaderValue::from_static("sent"));
        upload.send_trailers(trailers).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut received = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            received.extend_from_slice(&chunk);
        }
        assert!(
            received == payload,
            "the body whole: {} bytes",
            received.len()
        );
        let trailers = body.trailers().await.unwrap().expect("trailers");
        assert_eq!(
            trailers.get("x-client").unwrap(),
            "sent",
            "the client's, to the backend and back"
        );
        assert_eq!(trailers.get("x-backend").unwrap(), "done", "the backend's");
    });
}

/// Trailers go through the connections' HPACK tables too (gRPC's `grpc-status` on every
/// answer): twenty exchanges on one connection, interleaved, each with trailers both ways
/// that repeat and one that does not, each reaching the other side as sent.
#[test]
fn trailers_that_repeat_pass_through_the_tables_both_ways() {
    run(async {
        let backend = backend(Arc::default()).await;
        let daemon = daemon(&format!("/={backend}"), &[]);
        let send = connect(daemon.addr).await;
        let mut exchanges = Vec::new();
        for i in 0..20 {
            let request = Request::post("http://t/echo").body(()).unwrap();
            let (response, mut upload) = (send.clone().ready().await.unwrap())
                .send_request(request, false)
                .unwrap();
            upload
                .send_data(Bytes::from(format!("body {i}")), false)
                .unwrap();
            let mut trailers = HeaderMap::new();
            trailers.insert("x-same", HeaderValue::from_static("0"));
            trailers.insert("x-own", HeaderValue::from_str(&i.to_string()).unwrap());
            upload.send_trailers(trailers).unwrap();
            exchanges.push((i, response));
        }
        for (i, response) in exchanges {
            let mut body = response.await.unwrap().into_body();
            let mut received = Vec::new();
            while let Some(chunk) = body.data().await {
                received.extend_from_slice(&chunk.unwrap());
            }
            assert_eq!(received, format!("body {i}").as_bytes());
            let trailers = body.trailers().await.unwrap().expect("trailers");
            assert_eq!(trailers["x-same"], "0", "exchange {i}");
            assert_eq!(trailers["x-own"], i.to_string().as_str(), "exchange {i}");
            assert_eq!(trailers["x-backend"], "done", "exchange {i}");
        }
    });
}

/// RFC 9113 §5.4.2: a backend's reset reaches the client as a reset of that stream (or a
/// `502` when it comes before any answer), and a client's reset reaches the backend; the
/// connection lives on.
#[test]
fn resets_pass_both_ways() {
    run(async {
        let seen = Arc::new(Seen::default());
        let backend = backend(seen.clone()).await;
        let daemon = daemon(&format!("/={backend}"), &[]);
        let send = connect(daemon.addr).await;
        // Before answering: the stream gets 502.
        assert_eq!(get(&send, "/reset").await.0, StatusCode::BAD_GATEWAY);
        // Mid-body: the client's stream is reset.
        let request = Request::get("http://t/reset-mid-body").body(()).unwrap();
        let (response, _) = send
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(request, true)
            .unwrap();
        let mut body = response.await.unwrap().into_body();
        let mut error = None;
        while let Some(chunk) = body.data().await {
            match chunk {
                Ok(chunk) => drop(body.flow_control().release_capacity(chunk.len())),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let error = error.expect("the backend's reset reaches the client");
        assert!(error.is_reset(), "{error:?}");
        // The client gives up on a stream: the backend's is reset too.
        let request = Request::post("http://t/wait-for-reset").body(()).unwrap();
        let (response, mut upload) = send
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(request, false)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        upload.send_reset(Reason::CANCEL);
        drop(response);
        for _ in 0..100 {
            if !seen.resets.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(*seen.resets.lock().unwrap(), ["/wait-for-reset"]);
        assert_eq!(
            get(&send, "/fine").await.0,
            StatusCode::OK,
            "the connection lives on"
        );
    });
}

/// The numbers after `in=` and `out=` in `line`.
fn bytes_in_and_out(line: &str) -> (u64, u64) {
    let field = |name: &str| -> u64 {
        let start = line
            .find(name)
            .unwrap_or_else(|| panic!("{name} in {line}"))
            + name.len();
        let digits: String = line[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    (field(" in="), field(" out="))
}

/// The log line holding `needle`, once written (waiting without blocking the runtime, on
/// which the client's connection sends what it owes).
async fn log_line(daemon: &Daemon, needle: &str) -> String {
    for _ in 0..1000 {
        if let Some(line) = daemon.logs().lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {needle} in\n{}", daemon.logs())
}

/// An access line for each stream (ABI 1.8), as nginx and HAProxy log each request: its
/// request, status, bytes each way (a 200,000-byte echo is in and out), and for a stream
/// reset rather than answered, by whom; a `token=` value cut as the daemon's own lines cut
/// it. Before, an h2c connection had one line, for the connection, when it ended.
#[test]
fn each_stream_has_an_access_line() {
    run(async {
        let seen = Arc::new(Seen::default());
        let backend = backend(seen.clone()).await;
        let daemon = daemon(&format!("/={backend}"), &[]);
        let send = connect(daemon.addr).await;
        assert_eq!(
            get(&send, "/ok/x?token=secret-value").await.0,
            StatusCode::OK
        );
        let line = log_line(
            &daemon,
            "\"GET /ok/x?token=sec... HTTP/2.0\" 200 proto=h2c in=",
        )
        .await;
        assert!(!daemon.logs().contains("secret-value"), "{line}");
        let (_, out) = bytes_in_and_out(&line);
        assert!(out >= "/ok/x".len() as u64, "{line}");
        // A body each way, and the request's named fields.
        let request = Request::post("http://t/echo")
            .header("user-agent", "grpc-test/1.0")
            .header("referer", "http://t/page?token=abcdef")
            .body(())
            .unwrap();
        let (response, mut upload) = send
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(request, false)
            .unwrap();
        upload.reserve_capacity(200_000);
        upload
            .send_data(Bytes::from(vec![7u8; 200_000]), true)
            .unwrap();
        let mut body = response.await.unwrap().into_body();
        while let Some(chunk) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.unwrap().len());
        }
        let line = log_line(&daemon, "\"POST /echo HTTP/2.0\" 200 proto=h2c").await;
        let (bytes_in, bytes_out) = bytes_in_and_out(&line);
        assert!((200_000..201_000).contains(&bytes_in), "{line}");
        assert!((200_000..201_000).contains(&bytes_out), "{line}");
        assert!(
            line.ends_with(
                " host=\"t\" referer=\"http://t/page?token=abc...\" ua=\"grpc-test/1.0\""
            ),
            "{line}"
        );
        // The relay's own answer, and resets by each side.
        assert_eq!(get(&send, "/reset").await.0, StatusCode::BAD_GATEWAY);
        log_line(&daemon, "\"GET /reset HTTP/2.0\" 502 proto=h2c").await;
        let request = Request::post("http://t/wait-for-reset").body(()).unwrap();
        let (response, mut upload) = send
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(request, false)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        upload.send_reset(Reason::CANCEL);
        drop(response);
        let line = log_line(&daemon, "\"POST /wait-for-reset HTTP/2.0\" - proto=h2c").await;
        assert!(
            line.ends_with("reason=\"reset by the client (CANCEL)\""),
            "{line}"
        );
        let request = Request::get("http://t/reset-mid-body").body(()).unwrap();
        let (response, _) = send
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(request, true)
            .unwrap();
        let mut body = response.await.unwrap().into_body();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let line = log_line(&daemon, "\"GET /reset-mid-body HTTP/2.0\" 200 proto=h2c").await;
        assert!(
            line.ends_with("reason=\"reset (INTERNAL_ERROR)\""),
            "{line}"
        );
    });
}

/// With `SWITCHYARD_ACCESS_LOG=json` a stream's line is a JSON object as the daemon's are;
/// with the access log off there is none.
#[test]
fn stream_access_lines_follow_the_access_log_settings() {
    run(async {
        let seen = Arc::new(Seen::default());
        let backend = backend(seen.clone()).await;
        let daemon = daemon(
            &format!("/={backend}"),
            &[("SWITCHYARD_ACCESS_LOG", "json")],
        );
        let send = connect(daemon.addr).await;
        assert_eq!(get(&send, "/json").await.0, StatusCode::OK);
        let line = log_line(&daemon, "\"target\":\"/json\"").await;
        let object: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(object["method"], "GET", "{line}");
        assert_eq!(object["version"], "HTTP/2.0", "{line}");
        assert_eq!(object["status"], 200, "{line}");
        assert_eq!(object["proto"], "h2c", "{line}");
        assert!(object["out"].as_u64().unwrap() >= 5, "{line}");

        let daemon = self::daemon(
            &format!("/={backend}"),
            &[("RUST_LOG", "debug,switchyard::access=off")],
        );
        let send = connect(daemon.addr).await;
        assert_eq!(get(&send, "/quiet").await.0, StatusCode::OK);
        // A stream's line is handed to the log writer before its last frame goes out (the
        // writer writes within a millisecond): none came.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!daemon.logs().contains("/quiet"), "{}", daemon.logs());
    });
}

/// On stop, GOAWAY: a stream in flight finishes, no new one is taken.
#[test]
fn stopping_sends_goaway_and_lets_streams_in_flight_finish() {
    run(async {
        let seen = Arc::new(Seen::default());
        let backend = backend(seen.clone()).await;
        let daemon = daemon(&format!("/={backend}"), &[]);
        let send = connect(daemon.addr).await;
        let held = tokio::spawn({
            let send = send.clone();
            async move { get(&send, "/hold").await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        daemon.signal(libc::SIGTERM);
        let (status, body) = held.await.unwrap();
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "/hold"),
            "finished"
        );
        // GOAWAY came: a new stream is refused by the client library itself.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let refused = match send.ready().await {
            Err(e) => e.is_go_away() || e.is_io(),
            Ok(mut ready) => {
                let request = Request::get("http://t/late").body(()).unwrap();
                match ready.send_request(request, true) {
                    Err(_) => true,
                    Ok((response, _)) => response.await.is_err(),
                }
            }
        };
        assert!(refused, "no new stream after GOAWAY");
    });
}

/// `SWITCHYARD_H2C_MAX_HEADER_LIST_BYTES`: a stream whose headers are larger is answered
/// `431`, and only that stream.
#[test]
fn a_header_list_over_the_limit_is_431() {
    run(async {
        let seen = Arc::new(Seen::default());
        let backend = backend(seen.clone()).await;
        let daemon = daemon(&format!("/={backend}"), &[]);
        let send = connect(daemon.addr).await;
        let request = Request::get("http://t/big")
            .header("x-big", "a".repeat(20_000))
            .body(())
            .unwrap();
        let (response, _) = send
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(request, true)
            .unwrap();
        let status = match response.await {
            Ok(response) => response.status(),
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(get(&send, "/small").await.0, StatusCode::OK);
    });
}

/// `SWITCHYARD_H2C_MAX_STREAMS` is what the daemon's SETTINGS tell the client.
#[test]
fn the_streams_limit_is_announced() {
    run(async {
        let seen = Arc::new(Seen::default());
        let backend = backend(seen.clone()).await;
        let daemon = daemon(
            &format!("/={backend}"),
            &[("SWITCHYARD_H2C_MAX_STREAMS", "3")],
        );
        let send = connect(daemon.addr).await;
        assert_eq!(get(&send, "/x").await.0, StatusCode::OK); // SETTINGS are in by now
        assert_eq!(send.current_max_send_streams(), 3);
        let default = self::daemon(&format!("/={backend}"), &[]);
        let send = connect(default.addr).await;
        assert_eq!(get(&send, "/x").await.0, StatusCode::OK);
        assert_eq!(send.current_max_send_streams(), 100);
    });
}

/// Backend connections are pooled: twenty requests from two clients, one after another,
/// over few backend connections (at most the four an HTTP/2 backend gets), not twenty.
#[test]
fn backend_connections_are_pooled() {
    run(async {
        let seen = Arc::new(Seen::default());
        let backend = backend(seen.clone()).await;
        let daemon = daemon(&format!("/={backend}"), &[]);
        for _ in 0..2 {
            let send = connect(daemon.addr).await;
            for i in 0..10 {
                assert_eq!(get(&send, &format!("/{i}")).await.0, StatusCode::OK);
            }
        }
        let connections = seen.connections.load(Ordering::SeqCst);
        assert!(
            (1..=4).contains(&connections),
            "{connections} backend connections"
        );
    });
}

/// Behind a balancer that sends the PROXY protocol, `X-Forwarded-For` is the client's
/// address the header gives; so is `X-Real-IP`, whatever the client wrote in it.
#[test]
fn forwarded_for_is_the_proxy_protocols_client() {
    run(async {
        use tokio::io::AsyncWriteExt;
        let seen = Arc::new(Seen::default());
        let backend = backend(seen.clone()).await;
        let daemon = daemon(
            &format!("/={backend}"),
            &[
                ("SWITCHYARD_PROXY_PROTOCOL", "v1"),
                ("SWITCHYARD_PROXY_FROM", "127.0.0.1"),
            ],
        );
        let mut tcp = TcpStream::connect(daemon.addr).await.unwrap();
        tcp.write_all(b"PROXY TCP4 203.0.113.9 10.0.0.1 5000 80\r\n")
            .await
            .unwrap();
        let (send, connection) = client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let send = send;
        // Three requests on one backend connection: the relay indexes the forwarding fields
        // with the first and refers to them after (RFC 7541), so the backend's decoder must
        // find the same values each time.
        for path in ["/who", "/who-again", "/who-else"] {
            let request = Request::get(format!("http://t{path}"))
                .header("x-real-ip", "6.6.6.6")
                .header("x_real_ip", "6.6.6.7")
                .body(())
                .unwrap();
            let mut ready = send.clone().ready().await.unwrap();
            let (response, _) = ready.send_request(request, true).unwrap();
            assert_eq!(response.await.unwrap().status(), StatusCode::OK);
        }
        assert_eq!(*seen.forwarded_for.lock().unwrap(), ["203.0.113.9"; 3]);
        assert_eq!(*seen.real_ip.lock().unwrap(), ["203.0.113.9"; 3]);
        assert_eq!(
            *seen.forwarded.lock().unwrap(),
            ["for=203.0.113.9;proto=http;host=\"t\""; 3]
        );
    });
}

/// RFC 7541: the relay writes each backend connection's requests, and each client
/// connection's answers, with the connection's HPACK table, so the fields every message
/// repeats cross as indices; whatever the tables hold and evict, the backend reads each
/// request's fields as the client sent them, and the client each answer's as the backend
/// sent them (here 300 requests on one connection, each with a value of its own of up to
/// 400 bytes beside values that repeat, and answers with the same: the tables fill and
/// evict many times over).
#[test]
fn fields_reach_the_backend_and_the_client_as_sent_through_the_tables() {
    run(async {
        let seen = Arc::new(Seen::default());
        let backend = backend(seen.clone()).await;
        let daemon = daemon(&format!("/={backend}"), &[]);
        let send = connect(daemon.addr).await;
        let mut sent: Vec<Vec<(String, String)>> = Vec::new();
        for i in 0..300 {
            let own = format!("{i}-{}", "v".repeat(i * 37 % 400));
            let mut token = HeaderValue::from_static("Bearer same-token");
            token.set_sensitive(i % 2 == 0);
            let request = Request::get(format!("http://t/fields/{}", i % 5))
                .header("x-t-same", "always")
                .header("x-t-own", own.as_str())
                .header("x-t-few", format!("s{}", i % 3))
                .header("authorization", token)
                .body(())
                .unwrap();
            let response = answer(&send, request).await;
            assert_eq!(response.status(), StatusCode::OK);
            let mut answered: Vec<(&str, &str)> = (response.headers().iter())
                .filter(|(n, _)| n.as_str().starts_with("x-t-"))
                .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
                .collect();
            answered.sort();
            // In the order `answered` is sorted in.
            let asked = [
                ("x-t-few", format!("s{}", i % 3)),
                ("x-t-own", own.clone()),
                ("x-t-same", "always".to_string()),
            ];
            let asked: Vec<(&str, &str)> = asked.iter().map(|(n, v)| (*n, v.as_str())).collect();
            assert_eq!(answered, asked, "answer {i}");
            let mut fields = vec![
                ("authorization", "Bearer same-token".to_string()),
                ("x-t-same", "always".to_string()),
                ("x-t-own", own),
                ("x-t-few", format!("s{}", i % 3)),
            ];
            fields.sort();
            sent.push(
                fields
                    .into_iter()
                    .map(|(n, v)| (n.to_string(), v))
                    .collect(),
            );
        }
        let mut got = std::mem::take(&mut *seen.fields.lock().unwrap());
        got.iter_mut().for_each(|fields| fields.sort());
        assert_eq!(got.len(), 300);
        for (i, (got, sent)) in got.iter().zip(&sent).enumerate() {
            assert_eq!(got, sent, "request {i}");
        }
    });
}

/// RFC 9113 §6.10: field blocks larger than a frame, requests and answers both, cross the
/// relay as HEADERS and CONTINUATION frames after going through the tables, while other
/// streams' blocks of the same connection use the tables between them: five streams at a
/// time, each with fields that repeat, one of 20-30 KB that does not, and one that changes
/// every round; every request reaches the backend and every answer the client as sent.
#[test]
fn field_blocks_larger_than_a_frame_cross_in_continuation_frames_through_the_tables() {
    run(async {
        let seen = Arc::new(Seen::default());
        let backend = backend(seen.clone()).await;
        let limit = [("SWITCHYARD_H2C_MAX_HEADER_LIST_BYTES", "131072")];
        let daemon = daemon(&format!("/={backend}"), &limit);
        let send = connect(daemon.addr).await;
        let fields_of = |i: usize| {
            // Characters Huffman codes make longer: the block stays over 16 KiB.
            let big: String = (0..20_000 + i * 397 % 10_000)
                .map(|k| char::from(b"{}^|~<>`"[(k * 7 + i) % 8]))
                .collect();
            let mut fields = vec![
                ("x-t-big".to_string(), big),
                ("x-t-round".to_string(), format!("r{i}")),
            ];
            for k in 0..12 {
                fields.push((format!("x-t-same-{k}"), "s".repeat(100 + k)));
            }
            fields.sort();
            fields
        };
        let mut asked = Vec::new();
        for round in 0..8 {
            let mut answers = Vec::new();
            for i in round * 5..round * 5 + 5 {
                let mut request = Request::get(format!("http://t/fields/{i}"));
                for (name, value) in fields_of(i) {
                    request = request.header(name, value);
                }
                let (response, _) = (send.clone().ready().await.unwrap())
                    .send_request(request.body(()).unwrap(), true)
                    .unwrap();
                answers.push((i, response));
                asked.push(fields_of(i));
            }
            for (i, response) in answers {
                let response = response.await.unwrap();
                assert_eq!(response.status(), StatusCode::OK, "answer {i}");
                let mut answered: Vec<(String, String)> = (response.headers().iter())
                    .filter(|(n, _)| n.as_str().starts_with("x-t-"))
                    .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
                    .collect();
                answered.sort();
                assert!(
                    answered == fields_of(i),
                    "answer {i} differs from its request"
                );
            }
        }
        let mut got = std::mem::take(&mut *seen.fields.lock().unwrap());
        got.iter_mut().for_each(|fields| fields.sort());
        // The backend serves streams as they come; match each request by its round field.
        got.sort_by_key(|fields| fields.iter().find(|(n, _)| n == "x-t-round").cloned());
        asked.sort_by_key(|fields| fields.iter().find(|(n, _)| n == "x-t-round").cloned());
        assert_eq!(got.len(), 40);
        for (got, asked) in got.iter().zip(&asked) {
            assert!(
                got == asked,
                "a request reached the backend unlike it was sent"
            );
        }
    });
}

/// RFC 7541 §4.2: a peer that lowers SETTINGS_HEADER_TABLE_SIZE (here to 0, the client and
/// the backend both) gets no entry added to its table and no index into it: every request
/// and answer of a connection with repeated fields still decodes (h2's decoders refuse an
/// index past their table).
#[test]
fn peers_that_lower_their_table_size_get_no_index_into_it() {
    run(async {
        let seen = Arc::new(Seen::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = seen.clone();
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                let seen = serving.clone();
                tokio::spawn(async move {
                    let mut builder = server::Builder::new();
                    builder.header_table_size(0);
                    let Ok(mut connection) = builder.handshake(socket).await else {
                        return;
                    };
                    while let Some(Ok((request, respond))) = connection.accept().await {
                        tokio::spawn(serve(request, respond, seen.clone()));
                    }
                });
            }
        });
        let daemon = daemon(&format!("/={addr}"), &[]);
        let lowered = client::Builder::new().header_table_size(0).clone();
        let send = connect_by(daemon.addr, &lowered).await;
        for i in 0..20 {
            let request = Request::get(format!("http://t/fields/{}", i % 2))
                .header("x-t-same", "always")
                .header("user-agent", "repeated/1.0")
                .body(())
                .unwrap();
            let response = answer(&send, request).await;
            assert_eq!(response.status(), StatusCode::OK, "request {i}");
            assert_eq!(response.headers()["x-t-same"], "always", "answer {i}");
        }
        assert_eq!(seen.fields.lock().unwrap().len(), 20);
    });
}

/// An upgrade's first answer may come before the client's own SETTINGS (its preface
/// follows the `101` whenever it likes): the client's table is not used until that
/// SETTINGS came, as a client may lower its table size there (the upgrade's
/// HTTP2-Settings said nothing of it). A review found the answer adding entries.
#[test]
fn an_upgrades_first_answer_before_the_clients_settings_uses_no_table() {
    use std::io::{Read, Write};
    // The backend on a thread of its own, which outlives the test (the client here is
    // blocking).
    let (backend_addr, backend_up) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        run(async move {
            backend_addr.send(backend(Arc::default()).await).unwrap();
            std::future::pending::<()>().await
        })
    });
    let backend = backend_up.recv().unwrap();
    let daemon = daemon(&format!("/={backend}"), &[]);
    let mut socket = std::net::TcpStream::connect(daemon.addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // HTTP2-Settings: SETTINGS_MAX_CONCURRENT_STREAMS 100, in base64url.
    socket
        .write_all(
            b"GET /fields/up HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\nx-t-a: v\r\n\r\n",
        )
        .unwrap();
    let mut input = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&input));
        input.extend_from_slice(&buf[..n]);
        if let Some(at) = input.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    assert!(
        input.starts_with(b"HTTP/1.1 101 "),
        "{:?}",
        String::from_utf8_lossy(&input)
    );
    input.drain(..head_end);
    // Frames until stream 1's HEADERS, without a preface of ours.
    let block = read_frame(&mut socket, &mut input, 0x1, 1);
    // :status 200, then `x-t-a: v` as a literal that adds nothing (§6.2.2), not §6.2.1.
    assert_eq!(&block[..2], &[0x88, 0x00], "{block:x?}");
}

/// A client connection gone quiet (no stream, its backend connection closed after 5 s
/// unused) lets its HPACK table go, and the next answer empties the client's table first
/// (RFC 7541 §6.3): the client decodes it, and the answers after it, as the backend sent
/// them.
#[test]
fn answers_after_a_quiet_spell_decode_as_sent() {
    run(async {
        let seen = Arc::new(Seen::default());
        let backend = backend(seen.clone()).await;
        let daemon = daemon(&format!("/={backend}"), &[]);
        let send = connect(daemon.addr).await;
        let ask = |value: &'static str| {
            let send = send.clone();
            async move {
                let request = Request::get("http://t/fields/quiet")
                    .header("x-t-a", value)
                    .header("x-t-b", "same")
                    .body(())
                    .unwrap();
                let (response, _) = (send.ready().await.unwrap())
                    .send_request(request, true)
                    .unwrap();
                let response = response.await.unwrap();
                let field = |name: &str| response.headers()[name].to_str().unwrap().to_string();
                (field("x-t-a"), field("x-t-b"))
            }
        };
        for value in ["1", "2"] {
            assert_eq!(ask(value).await, (value.to_string(), "same".to_string()));
        }
        tokio::time::sleep(Duration::from_millis(5_600)).await;
        for value in ["2", "3", "3"] {
            assert_eq!(ask(value).await, (value.to_string(), "same".to_string()));
        }
        assert_eq!(
            seen.connections.load(Ordering::SeqCst),
            2,
            "the backend connection was closed"
        );
    });
}

/// What a backend reads of each request, on the wire: after the first, a request whose
/// fields repeat is a byte a field (the client's `user-agent` and address included), and a
/// field the client sent never indexed stays so, credentials or not (RFC 7541 §7.1.3: an
/// intermediary keeps that representation; it was written without indexing before).
#[test]
fn rfc7541_repeated_fields_cost_a_byte_and_never_indexed_fields_stay_so() {
    let (backend, blocks) = raw_h2_backend_keeping_blocks();
    let daemon = daemon(&format!("/={backend}"), &[]);
    run(async {
        let send = connect(daemon.addr).await;
        for _ in 0..3 {
            let mut secret = HeaderValue::from_static("s3cret");
            secret.set_sensitive(true);
            let mut token = HeaderValue::from_static("Bearer t");
            token.set_sensitive(true);
            let request = Request::get("http://t/api/x")
                .header("user-agent", "grpc-go/1.60")
                .header("content-type", "application/grpc")
                .header("x-secret", secret)
                .header("authorization", token)
                .body(())
                .unwrap();
            assert_eq!(answer(&send, request).await.status(), StatusCode::OK);
        }
    });
    let blocks = blocks.lock().unwrap();
    assert_eq!(blocks.len(), 3);
    let never_secret = b"\x10\x08x-secret\x06s3cret";
    // `authorization` is the static table's 23rd name: 15 in the prefix, 8 after.
    let never_token = b"\x1f\x08\x08Bearer t";
    for (i, block) in blocks.iter().enumerate() {
        let has = |what: &[u8]| block.windows(what.len()).any(|w| w == what);
        assert!(
            has(never_secret) && has(never_token),
            "request {i}: {block:x?}"
        );
    }
    // :method, :scheme, :path, :authority, user-agent, content-type and the three
    // forwarding fields: nine bytes, beside the two never indexed.
    let repeated = blocks[2].len() - never_secret.len() - never_token.len();
    assert_eq!(repeated, 9, "{:x?}", blocks[2]);
    assert!(blocks[0].len() > 100, "{}", blocks[0].len());
}

/// An HTTP/2 backend of raw frames that keeps each request's field block (HEADERS without
/// CONTINUATION) and answers it `200` with no body.
pub(crate) fn raw_h2_backend_keeping_blocks() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let blocks = Arc::new(Mutex::new(Vec::new()));
    let kept = blocks.clone();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            let kept = kept.clone();
            std::thread::spawn(move || {
                let _ = socket.write_all(&raw_frame(0x4, 0, 0, &[]));
                let mut input = Vec::new();
                let mut buf = [0u8; 65_536];
                loop {
                    match socket.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => input.extend_from_slice(&buf[..n]),
                    }
                    if input.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") {
                        input.drain(..24);
                    }
                    while input.len() >= 9 {
                        let len = u32::from_be_bytes([0, input[0], input[1], input[2]]) as usize;
                        if input.len() < 9 + len {
                            break;
                        }
                        let frame: Vec<u8> = input.drain(..9 + len).collect();
                        let stream = u32::from_be_bytes(frame[5..9].try_into().unwrap());
                        let reply = match (frame[3], frame[4] & 0x1) {
                            (0x4, 0) => raw_frame(0x4, 0x1, 0, &[]),
                            (0x1, _) => {
                                assert_eq!(frame[4] & 0x28, 0, "no padding or priority");
                                kept.lock().unwrap().push(frame[9..].to_vec());
                                raw_frame(0x1, 0x4 | 0x1, stream, &[0x88])
                            }
                            _ => continue,
                        };
                        if socket.write_all(&reply).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, blocks)
}

/// CVE-2023-44487, "rapid reset": a client that opens streams and resets them at once
/// makes a proxy and its backend work for nothing, never meeting the stream limit. The
/// relay counts such frames and ends the connection with GOAWAY ENHANCE_YOUR_CALM (the
/// GOAWAY reaches the client: the relay lingers rather than reset the connection), while
/// another client is served meanwhile.
#[test]
fn rapid_reset_gets_goaway_enhance_your_calm_and_other_clients_are_served() {
    run(async {
        let seen = Arc::new(Seen::default());
        let backend = backend(seen.clone()).await;
        let daemon = daemon(&format!("/={backend}"), &[]);
        let addr = daemon.addr;
        let attack = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            // GET http://t/ (RFC 7541: indexed :method GET, :scheme http, :path /; a
            // literal :authority).
            let block = [0x82, 0x86, 0x84, 0x01, 0x01, b't'];
            for i in 0..2_000u32 {
                let id = 2 * i + 1;
                out.extend(raw_frame(0x1, 0x4 | 0x1, id, &block));
                out.extend(raw_frame(0x3, 0, id, &8u32.to_be_bytes()));
            }
            goaway_after(addr, &out)
        });
        let send = connect(addr).await;
        for i in 0..20 {
            assert_eq!(get(&send, &format!("/{i}")).await.0, StatusCode::OK);
        }
        let code = attack.await.unwrap();
        assert_eq!(code, 0xb, "GOAWAY ENHANCE_YOUR_CALM");
        assert_eq!(
            get(&send, "/after").await.0,
            StatusCode::OK,
            "the other client is served on"
        );
    });
}

/// From an attacker's review: the rapid-reset budget was one connection's, so a client
/// that opened another each time it met it sent a backend 77,000 requests a second for
/// nothing; and hyper's engine counted only resets of streams not yet accepted, so one
/// connection resetting 50 streams every 30 ms went on for good. Resets of streams already
/// at a backend count for the client's address now, on either engine: here each
/// connection stays under its own budget, and the address's sends one of them away.
#[test]
fn rapid_reset_over_many_connections_of_one_address_gets_goaway_on_either_engine() {
    run(async {
        let raw = raw_http1_backend();
        let h2 = backend(Arc::default()).await;
        let [(relay, relay_routes), (hyper, hyper_routes)] = both_engines(h2, raw);
        for (engine, routes, connections, pace, codes_sent) in [
            (relay, relay_routes, 4, None, &[0xb][..]),
            // Paced under h2's own count; hyper's GOAWAY is graceful. (On a loaded machine
            // the pace bunches up and h2's own count may send a connection away first,
            // with ENHANCE_YOUR_CALM, a flake audit saw: sent away either way. So under
            // load this row may pass on h2's count alone; unloaded, only the address's
            // budget sends 0x0.)
            (hyper, hyper_routes, 8, Some(20), &[0x0, 0xb][..]),
        ] {
            let daemon = daemon(&routes, &[]);
            let addr = daemon.addr;
            let codes = tokio::task::spawn_blocking(move || {
                (0..connections)
                    .map(|_| resets_at_the_backend(addr, 600, pace))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap();
            assert_eq!(
                codes[0], None,
                "{engine}: 600 are within one connection's budget"
            );
            assert!(
                codes.iter().flatten().any(|code| codes_sent.contains(code)),
                "{engine}: no GOAWAY {codes_sent:x?} on {connections} connections of 600 resets: {codes:?}"
            );
        }
    });
}

/// Opens a connection, has one request answered (so the backend connection is up), then
/// sends `count` requests each reset at once (`pace`: so many at a time, reset 20 ms
/// after they were sent; or each right after itself), and a PING: the GOAWAY's error
/// code if one comes before the PING's answer.
fn resets_at_the_backend(addr: SocketAddr, count: u32, pace: Option<u32>) -> Option<u32> {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let block = [0x82, 0x86, 0x84, 0x01, 0x01, b't'];
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(raw_frame(0x4, 0, 0, &[]));
    out.extend(raw_frame(0x1, 0x4 | 0x1, 1, &block));
    socket.write_all(&out).unwrap();
    let mut input = Vec::new();
    let mut buf = [0u8; 65_536];
    let mut next_frame = |socket: &mut std::net::TcpStream| loop {
        if input.len() >= 9 {
            let len = u32::from_be_bytes([0, input[0], input[1], input[2]]) as usize;
            if input.len() >= 9 + len {
                let frame: Vec<u8> = input.drain(..9 + len).collect();
                return Some((frame[3], frame[4], frame[9..].to_vec()));
            }
        }
        match socket.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => input.extend_from_slice(&buf[..n]),
        }
    };
    // The first answer's end: DATA with END_STREAM on stream 1.
    while let Some((kind, flags, _)) = next_frame(&mut socket) {
        if kind == 0x0 && flags & 0x1 != 0 {
            break;
        }
    }
    // GET /wait-for-reset, which the backend never answers (a literal :path).
    let mut held = vec![0x82, 0x86, 0x04, 15];
    held.extend_from_slice(b"/wait-for-reset");
    held.extend([0x01, 0x01, b't']);
    let mut out = Vec::new();
    let batch = pace.unwrap_or(1);
    for first in (1..=count).step_by(batch as usize) {
        let ids = (first..=(first + batch - 1).min(count)).map(|i| 2 * i + 1);
        for id in ids.clone() {
            out.extend(raw_frame(0x1, 0x4 | 0x1, id, &held));
        }
        if pace.is_some() {
            // Accepted before they are reset.
            let _ = socket.write_all(&std::mem::take(&mut out));
            std::thread::sleep(Duration::from_millis(20));
        }
        for id in ids {
            out.extend(raw_frame(0x3, 0, id, &8u32.to_be_bytes()));
        }
    }
    out.extend(raw_frame(0x6, 0, 0, b"resetend"));
    let _ = socket.write_all(&out);
    while let Some((kind, flags, payload)) = next_frame(&mut socket) {
        match kind {
            0x7 => return Some(u32::from_be_bytes(payload[4..8].try_into().unwrap())),
            0x6 if flags & 0x1 != 0 => return None,
            _ => {}
        }
    }
    None
}

/// The next frame from `stream` (after what `input` holds already: what is read past it
/// stays there): its type, stream and payload; `None` once the connection ends.
pub(crate) fn next_frame(
    stream: &mut impl std::io::Read,
    input: &mut Vec<u8>,
) -> Option<(u8, u32, Vec<u8>)> {
    let mut buf = [0u8; 16_384];
    loop {
        if input.len() >= 9 {
            let len = u32::from_be_bytes([0, input[0], input[1], input[2]]) as usize;
            if input.len() >= 9 + len {
                let frame: Vec<u8> = input.drain(..9 + len).collect();
                let on = u32::from_be_bytes(frame[5..9].try_into().unwrap()) & 0x7fff_ffff;
                return Some((frame[3], on, frame[9..].to_vec()));
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => input.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads frames from `stream` (after what `input` holds already) up to the first of type
/// `kind` on stream `id`, and returns its payload; the frames before it are dropped.
pub(crate) fn read_frame(
    stream: &mut impl std::io::Read,
    input: &mut Vec<u8>,
    kind: u8,
    id: u32,
) -> Vec<u8> {
    loop {
        match next_frame(stream, input) {
            Some((k, on, payload)) if k == kind && on == id => return payload,
            Some(_) => {}
            None => panic!("closed before a frame of type {kind} on stream {id}"),
        }
    }
}

/// One HTTP/2 frame as bytes.
pub(crate) fn raw_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// Sends the preface, an empty SETTINGS and `frames` to `addr`; the error code of the
/// GOAWAY that comes back (the test fails if the connection ends without one).
fn goaway_after(addr: std::net::SocketAddr, frames: &[u8]) -> u32 {
    let payload = first_frame_after(addr, frames, 0x7);
    u32::from_be_bytes(payload[4..8].try_into().unwrap())
}

/// Sends the preface, an empty SETTINGS and `frames` to `addr`; the payload of the first
/// frame of type `kind` that comes back.
fn first_frame_after(addr: std::net::SocketAddr, frames: &[u8], kind: u8) -> Vec<u8> {
    frames_until(addr, frames, kind).pop().unwrap().1
}

/// Sends the preface, an empty SETTINGS and `frames` to `addr`; the frames (type and
/// payload) that come back, up to the first of type `kind`.
fn frames_until(addr: std::net::SocketAddr, frames: &[u8], kind: u8) -> Vec<(u8, Vec<u8>)> {
    use std::io::Write;
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(raw_frame(0x4, 0, 0, &[]));
    out.extend_from_slice(frames);
    // The relay stops reading once it has had enough: the rest may not go in.
    let _ = socket.write_all(&out);
    let mut input = Vec::new();
    let mut seen = Vec::new();
    loop {
        let Some((got, _, payload)) = next_frame(&mut socket, &mut input) else {
            panic!("the connection ended with no frame of type {kind}");
        };
        seen.push((got, payload));
        if got == kind {
            return seen;
        }
    }
}

/// The GOAWAY error code the relay answers `frames` with (after the preface and an empty
/// SETTINGS), on a daemon whose route leads to a real backend.
fn goaway_for(frames: Vec<u8>) -> u32 {
    run(async {
        let seen = Arc::new(Seen::default());
        let backend = backend(seen.clone()).await;
        let daemon = daemon(&format!("/={backend}"), &[]);
        let addr = daemon.addr;
        tokio::task::spawn_blocking(move || goaway_after(addr, &frames))
            .await
            .unwrap()
    })
}

/// `GET http://t/` (RFC 7541: indexed :method GET, :scheme http, :path /; a literal
/// :authority), then a field `x` of `len` bytes as a literal with a new name: `kind` 0x00
/// without indexing (§6.2.2), 0x40 added to the table (§6.2.1).
fn get_with_long_field(kind: u8, len: usize) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 0x01, b't', kind, 0x01, b'x', 0x7f];
    let mut rest = len - 127;
    while rest >= 128 {
        block.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    block.push(rest as u8);
    block.extend(std::iter::repeat_n(b'a', len));
    block
}

/// RFC 9113 §8.2.1: a field value with CR or LF (or NUL), or a name with a character a
/// name may not have, makes the request malformed. The relay passed such fields on, and a
/// backend that writes its requests out as HTTP/1.1 would have read a CR LF as a field of
/// the client's making. Now the stream is reset with PROTOCOL_ERROR, the backend sees
/// nothing, and a well-formed stream after it on the connection is served.
#[test]
fn rfc9113_8_2_1_a_field_with_cr_lf_never_reaches_the_backend() {
    run(async {
        let seen = Arc::new(Seen::default());
        let backend = backend(seen.clone()).await;
        let daemon = daemon(&format!("/={backend}"), &[]);
        let addr = daemon.addr;
        // GET http://t/ (indexed :method, :scheme, :path; literal :authority), then
        // `x-a: b\r\nx-injected: 1` as a literal without indexing.
        let value = b"b\r\nx-injected: 1";
        let mut block = vec![0x82, 0x86, 0x84, 0x01, 0x01, b't', 0x00, 0x03];
        block.extend(b"x-a");
        block.push(value.len() as u8);
        block.extend(value);
        let mut frames = raw_frame(0x1, 0x5, 1, &block);
        frames.extend(raw_frame(
            0x1,
            0x5,
            3,
            &[0x82, 0x86, 0x84, 0x01, 0x01, b't'],
        ));
        let seen_frames = tokio::task::spawn_blocking(move || frames_until(addr, &frames, 0x1))
            .await
            .unwrap();
        let reset = seen_frames
            .iter()
            .find(|(kind, _)| *kind == 0x3)
            .expect("RST_STREAM on the malformed stream");
        assert_eq!(u32::from_be_bytes(reset.1[..4].try_into().unwrap()), 0x1);
        assert_eq!(
            seen.connections.load(Ordering::SeqCst),
            1,
            "stream 3 went on"
        );
        assert!(
            seen.forwarded_for.lock().unwrap().len() == 1,
            "only stream 3 reached it"
        );
        // Its access line says why, as an HTTP/1.1 server's 400 would.
        let line = log_line(&daemon, "\"GET / HTTP/2.0\" - proto=h2c").await;
        assert!(
            line.contains(" reason=\"malformed (PROTOCOL_ERROR): "),
            "{line}"
        );
    });
}

/// A field block held open by empty CONTINUATION frames adds nothing and ends nothing:
/// each is counted with the frames that move no request, and the connection gets GOAWAY
/// ENHANCE_YOUR_CALM (before the fix it could go on for ever, a frame's work each).
#[test]
fn empty_continuation_frames_get_goaway_enhance_your_calm() {
    let mut frames = raw_frame(0x1, 0x1, 1, &[0x82, 0x86]); // HEADERS, no END_HEADERS
    for _ in 0..2_000 {
        frames.extend(raw_frame(0x9, 0, 1, &[]));
    }
    assert_eq!(goaway_for(frames), 0xb, "GOAWAY ENHANCE_YOUR_CALM");
}

/// Requests over the header-list limit are still decoded to their end (the HPACK table
/// must stay in step), and a block of names copied from the table costs milliseconds:
/// each counts as a hundred frames that move no request, so the eleventh in ten seconds
/// ends the connection with GOAWAY ENHANCE_YOUR_CALM. Before, a client could send them
/// for ever, 431 after 431 (an attacker's review).
#[test]
fn repeated_oversized_header_lists_get_goaway_enhance_your_calm() {
    // x: 20,000 bytes, split at the default 16 KiB frame size.
    let block = get_with_long_field(0x00, 20_000);
    let (first, second) = block.split_at(16_384);
    let mut frames = Vec::new();
    for i in 0..12u32 {
        let id = 2 * i + 1;
        frames.extend(raw_frame(0x1, 0x1, id, first)); // END_STREAM
        frames.extend(raw_frame(0x9, 0x4, id, second)); // END_HEADERS
    }
    assert_eq!(goaway_for(frames), 0xb, "GOAWAY ENHANCE_YOUR_CALM");
}

/// Requests waiting for a backend (here one that never accepts, so each waits the 5 s
/// connect time-out) hold their header blocks written out in full, and a client makes
/// 12 KiB of one from a few bytes that name its HPACK table: past 256 KiB of them a new
/// stream is refused (REFUSED_STREAM, which a client may retry) at once. Before, 100
/// such streams held 1.2 MB a connection until the time-out (an attacker's review).
#[test]
fn requests_waiting_for_a_backend_hold_a_bounded_amount() {
    let (_listener, silent, _fillers) = listener_never_answering();
    let daemon = daemon(&format!("/={silent}"), &[]);
    // x: 4,000 bytes added to the client's table (entry 62), then requests naming that
    // entry three times each.
    let mut frames = raw_frame(0x1, 0x4 | 0x1, 1, &get_with_long_field(0x40, 4_000));
    let again = [0x82, 0x86, 0x84, 0x01, 0x01, b't', 0xbe, 0xbe, 0xbe];
    for i in 1..100u32 {
        frames.extend(raw_frame(0x1, 0x4 | 0x1, 2 * i + 1, &again));
    }
    let reset = first_frame_after(daemon.addr, &frames, 0x3);
    assert_eq!(
        u32::from_be_bytes(reset[..4].try_into().unwrap()),
        0x7,
        "RST_STREAM REFUSED_STREAM, before the 5 s connect time-out"
    );
}

/// RFC 9113 §5.1: frames the client sent before it read our RST_STREAM are ignored. A
/// request the relay answers itself (no route: 404) before its body is in gets RST_STREAM
/// NO_ERROR, and the client's upload, 1,500 small DATA frames already on their way, goes
/// on arriving. Before, each cost a glitch and a reset of its own, and the connection got
/// GOAWAY ENHANCE_YOUR_CALM; now it serves on (the PING after them is answered).
#[test]
fn frames_on_the_way_after_our_reset_are_ignored() {
    run(async {
        let backend = backend(Arc::new(Seen::default())).await;
        let daemon = daemon(&format!("/api={backend}"), &[]);
        let addr = daemon.addr;
        // GET http://t/ with a body to come (END_HEADERS, no END_STREAM).
        let mut frames = raw_frame(0x1, 0x4, 1, &[0x82, 0x86, 0x84, 0x01, 0x01, b't']);
        for _ in 0..1_500 {
            frames.extend(raw_frame(0x0, 0, 1, b"0123456789"));
        }
        frames.extend(raw_frame(0x0, 0x1, 1, b"end")); // END_STREAM
        frames.extend(raw_frame(0x6, 0, 0, b"still ok"));
        let back = tokio::task::spawn_blocking(move || frames_until(addr, &frames, 0x6))
            .await
            .unwrap();
        let kinds: Vec<u8> = back.iter().map(|(kind, _)| *kind).collect();
        assert!(!kinds.contains(&0x7), "no GOAWAY: {kinds:?}");
        let resets = back.iter().filter(|(kind, _)| *kind == 0x3).count();
        assert_eq!(
            resets, 1,
            "one RST_STREAM (NO_ERROR), none per DATA frame: {kinds:?}"
        );
        assert_eq!(back.last().unwrap().1, b"still ok", "the PING is answered");
    });
}

/// Trailers on a stream the relay reset are ignored once (they end it); a client that
/// sends more field blocks on it makes the relay decode each for nothing, so they count
/// with the frames that move no request, and GOAWAY ENHANCE_YOUR_CALM comes (an
/// attacker's review of the change above: 2,500 such blocks went free).
#[test]
fn field_blocks_repeated_on_a_reset_stream_get_goaway_enhance_your_calm() {
    // POST http://t/ with content-length: 5 and END_STREAM: malformed (RFC 9113 §8.1.1),
    // reset at once.
    let post = [0x83, 0x86, 0x84, 0x01, 0x01, b't', 0x0f, 0x0d, 0x01, b'5'];
    let mut frames = raw_frame(0x1, 0x4 | 0x1, 1, &post);
    let trailer = [0x00, 0x01, b'x', 0x01, b'y']; // x: y, not indexed
    for _ in 0..1_100 {
        frames.extend(raw_frame(0x1, 0x4 | 0x1, 1, &trailer));
    }
    assert_eq!(goaway_for(frames), 0xb, "GOAWAY ENHANCE_YOUR_CALM");
}

/// A burst of streams past the limit is refused, and each refused stream's body, already
/// on its way, is ignored, however many streams there were (before a fix, the relay
/// remembered 128 resets and past them answered every frame with a reset of its own).
#[test]
fn bodies_of_a_burst_of_refused_streams_are_ignored() {
    run(async {
        let backend = backend(Arc::new(Seen::default())).await;
        let daemon = daemon(&format!("/={backend}"), &[]);
        let addr = daemon.addr;
        // 300 POSTs with bodies to come, then five DATA frames each, round robin.
        let post = [0x83, 0x86, 0x84, 0x01, 0x01, b't'];
        let ids: Vec<u32> = (0..300).map(|i| 2 * i + 1).collect();
        let mut frames = Vec::new();
        for &id in &ids {
            frames.extend(raw_frame(0x1, 0x4, id, &post));
        }
        for _ in 0..5 {
            for &id in &ids {
                frames.extend(raw_frame(0x0, 0, id, b"0123456789"));
            }
        }
        frames.extend(raw_frame(0x6, 0, 0, b"still ok"));
        let started = std::time::Instant::now();
        let back = tokio::task::spawn_blocking(move || frames_until(addr, &frames, 0x6))
            .await
            .unwrap();
        // Every refusal came before the PING's answer.
        let refusing = started.elapsed();
        let kinds: Vec<u8> = back.iter().map(|(kind, _)| *kind).collect();
        assert!(!kinds.contains(&0x7), "no GOAWAY: {kinds:?}");
        let codes: Vec<u32> = back
            .iter()
            .filter(|(kind, _)| *kind == 0x3)
            .map(|(_, payload)| u32::from_be_bytes(payload[..4].try_into().unwrap()))
            .collect();
        assert_eq!(
            codes.len(),
            200,
            "the streams past the 100 refused: {codes:?}"
        );
        assert!(
            codes.iter().all(|&code| code == 0x7),
            "REFUSED_STREAM only, no reset for a DATA frame: {codes:?}"
        );
        // Refused streams have access lines, up to REFUSED_LINES_PER_CLIENT a second in
        // bursts of twice as many: a refused stream costs a client a dozen bytes, its line
        // a hundred times that (a review).
        // The line's time is not matched: a loaded machine may make a refusal take 0.1 ms,
        // which `time=0.0ms` missed. Nor is the burst taken to be read at once: the rate
        // gives a line more every 50 ms the refusals took (a review saw the test fail once
        // under load).
        let most = 40 + (refusing.as_secs_f64() * 20.0).ceil() as usize;
        let refused = |logs: &str| {
            (logs.lines())
                .filter(|l| l.contains("\"POST / HTTP/2.0\" - proto=h2c in=6 out=0 time="))
                .filter(|l| l.contains("reason=\"refused (REFUSED_STREAM): its streams limit\""))
                .count()
        };
        for _ in 0..1000 {
            if refused(&daemon.logs()) >= 40 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lines = refused(&daemon.logs());
        assert!(
            (40..=most).contains(&lines),
            "{lines} lines for 200 refused streams in {refusing:?}"
        );
    });
}

/// An HTTP/1.1 backend (std threads, raw bytes) answering by path: `clte` with both a
/// Content-Length and chunks, `switch` with a 101, `hold` 200 `ok` after 3 s, `wait`
/// never (it reads until the connection closes), `big` 200 with 4 MiB, `bighead/N` 200
/// with a field of N bytes, `early` 200 `ok`
/// at once and then reads until the connection closes, `slow` reads nothing for 6 s, then
/// until the connection closes; anything else 200 `ok` (after a body of the request's
/// Content-Length).
fn raw_http1_backend() -> SocketAddr {
    raw_http1_backend_counted().0
}

/// [`raw_http1_backend`], with the count of its connections open, and a receive buffer
/// of 4 KiB (so that a body it does not read is held by the daemon, not by the kernel).
fn raw_http1_backend_counted() -> (SocketAddr, Arc<AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    socket.listen(1024).unwrap();
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let counted = open.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let open = counted.clone();
            open.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let to_end = |reader: &mut BufReader<std::net::TcpStream>| {
                    let mut sink = [0u8; 4096];
                    while reader.read(&mut sink).unwrap_or(0) > 0 {}
                };
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let mut length = 0;
                    let mut header = String::new();
                    while reader.read_line(&mut header).unwrap_or(0) > 2 {
                        let lower = header.to_ascii_lowercase();
                        if let Some(value) = lower.strip_prefix("content-length:") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                        header.clear();
                    }
                    if line.contains("/wait ") {
                        to_end(&mut reader);
                        break;
                    }
                    if line.contains("/early ") {
                        let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                        to_end(&mut reader);
                        break;
                    }
                    if line.contains("/slow ") {
                        std::thread::sleep(Duration::from_secs(6));
                        to_end(&mut reader);
                        break;
                    }
                    if let Some(size) = line
                        .split("/bighead/")
                        .nth(1)
                        .and_then(|rest| rest.split(' ').next()?.parse::<usize>().ok())
                    {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
                            "a".repeat(size)
                        );
                        if writer.write_all(head.as_bytes()).is_err() {
                            break;
                        }
                        line.clear();
                        continue;
                    }
                    if line.contains("/hold ") {
                        std::thread::sleep(Duration::from_secs(3));
                    }
                    if line.contains("/big ") {
                        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 4194304\r\n\r\n";
                        let body = vec![b'x'; 4 << 20];
                        if writer.write_all(head).and(writer.write_all(&body)).is_err() {
                            break;
                        }
                        line.clear();
                        continue;
                    }
                    if line.contains("/trailers ") {
                        // A chunked body: its trailer section goes back as the answer.
                        let Some(trailers) = chunked_trailers(&mut reader) else {
                            break;
                        };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{trailers}",
                            trailers.len()
                        );
                        if writer.write_all(answer.as_bytes()).is_err() {
                            break;
                        }
                        line.clear();
                        continue;
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        break;
                    }
                    let answer: &[u8] = if line.contains("/clte ") {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n"
                    } else if line.contains("/switch ") {
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    };
                    if writer.write_all(answer).is_err() {
                        break;
                    }
                    line.clear();
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

/// Reads a chunked body (RFC 9112 §7.1) to its end; its trailer section, lowercase.
fn chunked_trailers(reader: &mut impl std::io::BufRead) -> Option<String> {
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).ok()?;
        let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        if size == 0 {
            break;
        }
        let mut chunk = vec![0u8; size + 2];
        reader.read_exact(&mut chunk).ok()?;
    }
    let mut trailers = String::new();
    loop {
        let mut field = String::new();
        if reader.read_line(&mut field).ok()? <= 2 {
            return Some(trailers.to_ascii_lowercase());
        }
        trailers.push_str(&field);
    }
}

/// An HTTP/1.1 backend's answer framed by chunks and with a Content-Length goes on without
/// the Content-Length (RFC 9112 §6.3: the client saw DATA that disagreed with it, and reset
/// the stream); a 101 becomes 502 (HTTP/2 has none, RFC 9113 §8.6: it went out as a final
/// answer). Both from an attacker's review of the `http1://` routes.
#[test]
fn an_http1_backends_chunks_and_101_reach_the_client_as_http2_allows() {
    run(async {
        let raw = raw_http1_backend();
        let daemon = daemon(&format!("/one/=http1://{raw}"), &[]);
        let send = connect(daemon.addr).await;
        let (status, body) = get(&send, "/one/clte").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "abcdefghijklmnopqrstuvwxyz")
        );
        assert_eq!(get(&send, "/one/switch").await.0, StatusCode::BAD_GATEWAY);
        assert_eq!(
            get(&send, "/one/after").await,
            (StatusCode::OK, "ok".into())
        );
    });
}

/// With an `http1://` route the plugin serves through hyper; its HTTP/2 backend connections
/// were four, shared by every client, so one client's streams held open (here 40 against a
/// backend that allows 10 at a time on a connection) left every other client's waiting
/// without end. Each client connection now has its own.
#[test]
fn one_clients_held_streams_do_not_hold_another_clients() {
    run(async {
        // An HTTP/2 backend with 10 streams a connection: `/g/hold` is never answered.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h2_backend = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut builder = server::Builder::new();
                    builder.max_concurrent_streams(10);
                    let Ok(mut connection) = builder.handshake::<_, Bytes>(socket).await else {
                        return;
                    };
                    let mut held = Vec::new();
                    while let Some(Ok((request, mut respond))) = connection.accept().await {
                        if request.uri().path() == "/g/hold" {
                            held.push(respond);
                            continue;
                        }
                        let mut send = respond.send_response(Response::new(()), false).unwrap();
                        let _ = send.send_data(Bytes::from_static(b"served"), true);
                    }
                });
            }
        });
        let raw = raw_http1_backend();
        let routes = format!("/g/={h2_backend},/one/=http1://{raw}");
        let daemon = daemon(&routes, &[]);
        let holder = connect(daemon.addr).await;
        let mut held = Vec::new();
        for _ in 0..40 {
            let request = Request::get("http://t/g/hold").body(()).unwrap();
            let mut ready = holder.clone().ready().await.unwrap();
            held.push(ready.send_request(request, true).unwrap().0);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let other = connect(daemon.addr).await;
        let answer = tokio::time::timeout(Duration::from_secs(5), get(&other, "/g/x")).await;
        assert_eq!(answer.expect("another client is served").0, StatusCode::OK);
        drop(held);
    });
}

/// A client connection from 127.0.0.2 (another client to the daemon's per-client counts).
pub(crate) async fn connect_from_127_0_0_2(addr: SocketAddr) -> client::SendRequest<Bytes> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (send, connection) = client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// Sends `GET path` and returns its answer to come, with the status and `retry-after`.
fn start_get(
    send: &client::SendRequest<Bytes>,
    path: &str,
) -> impl std::future::Future<Output = (StatusCode, Option<HeaderValue>)> {
    let request = Request::get(format!("http://t{path}")).body(()).unwrap();
    let (response, _) = send.clone().send_request(request, true).unwrap();
    async move {
        let response = response.await.unwrap();
        let retry = response.headers().get("retry-after").cloned();
        (response.status(), retry)
    }
}

/// Each stream to an `http1://` backend holds a backend connection, bounded per client
/// connection only: 70 client connections of 16 streams each waiting for bodies that never
/// came took every descriptor of a daemon at the common limit of 1,024, and it accepted
/// no one. Now `SWITCHYARD_H2C_HTTP1_MAX` bounds them all and
/// `SWITCHYARD_H2C_HTTP1_PER_CLIENT` one address: past either, `503` with `Retry-After`
/// at once, and slots come back as streams end.
#[test]
fn streams_to_http1_backends_past_a_clients_share_or_the_whole_get_503() {
    run(async {
        let raw = raw_http1_backend();
        let daemon = daemon(
            &format!("/one/=http1://{raw}"),
            &[
                ("SWITCHYARD_H2C_HTTP1_MAX", "3"),
                ("SWITCHYARD_H2C_HTTP1_PER_CLIENT", "2"),
            ],
        );
        let one = connect(daemon.addr).await;
        let held = [start_get(&one, "/one/hold"), start_get(&one, "/one/hold")];
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, retry) = start_get(&one, "/one/x").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "past its share");
        assert_eq!(retry.as_ref().map(|v| v.as_bytes()), Some(&b"1"[..]));
        let other = connect_from_127_0_0_2(daemon.addr).await;
        let others = start_get(&other, "/one/hold");
        tokio::time::sleep(Duration::from_millis(300)).await;
        // (Blocks this thread a moment: the held answers are not due for seconds.)
        let gauge = daemon.wait_for_metric("switchyard_h2c_http1_backend_streams 3");
        gauge.expect("three streams at the backend");
        let (status, _) = start_get(&other, "/one/x").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "past the whole");
        for answer in held {
            assert_eq!(answer.await.0, StatusCode::OK);
        }
        assert_eq!(others.await.0, StatusCode::OK);
        assert_eq!(
            get(&one, "/one/x").await.0,
            StatusCode::OK,
            "slots come back"
        );
        assert_eq!(get(&other, "/one/x").await.0, StatusCode::OK);
    });
}

/// A daemon routing `/one/` to [`raw_http1_backend`] over HTTP/1.1, with one backend slot
/// a client and bodies that stop moving timed out after 300 ms.
fn one_slot_daemon() -> Daemon {
    let raw = raw_http1_backend();
    daemon(
        &format!("/one/=http1://{raw}"),
        &[
            ("SWITCHYARD_H2C_HTTP1_PER_CLIENT", "1"),
            ("SWITCHYARD_H2C_BODY_TIMEOUT_MS", "300"),
        ],
    )
}

/// A request body to an `http1://` backend that stops coming held the backend connection
/// (and its slot) for as long as the client kept the stream open. After
/// `SWITCHYARD_H2C_BODY_TIMEOUT_MS` of nothing it gets `408`, the backend connection is
/// closed, and the slot serves the next stream.
#[test]
fn a_request_body_that_stops_coming_gets_408_and_gives_its_slot_back() {
    run(async {
        let daemon = one_slot_daemon();
        let send = connect(daemon.addr).await;
        let request = Request::post("http://t/one/wait").body(()).unwrap();
        let (response, mut body) = send.clone().send_request(request, false).unwrap();
        body.send_data(Bytes::from_static(b"the start of a body"), false)
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("an answer once the body stopped for 300 ms")
            .unwrap();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(
            get(&send, "/one/x").await.0,
            StatusCode::OK,
            "the slot is back"
        );
        drop(body);
    });
}

/// Bodies trickling in held `http1://` backend slots for ever: a few bytes a stream every
/// `SWITCHYARD_H2C_BODY_TIMEOUT_MS`, and four addresses held all 2,500. A body is now read
/// (up to `SWITCHYARD_H2C_HTTP1_REQUEST_BUFFER`) before its stream takes a slot: here the
/// daemon has one, a body trickles in for 3 s, and another client's requests are served
/// meanwhile; the trickled body then reaches the backend whole. Past the buffer a body
/// takes its slot and streams, and a slot costs its client that many bytes.
#[test]
fn a_body_trickling_in_holds_no_http1_slot() {
    run(async {
        let raw = raw_http1_backend();
        let daemon = daemon(
            &format!("/one/=http1://{raw}"),
            &[
                ("SWITCHYARD_H2C_HTTP1_MAX", "1"),
                ("SWITCHYARD_H2C_BODY_TIMEOUT_MS", "1500"),
            ],
        );
        let trickling = connect(daemon.addr).await;
        let request = Request::post("http://t/one/x")
            .header("content-length", "60")
            .body(())
            .unwrap();
        let (response, mut body) = trickling.clone().send_request(request, false).unwrap();
        let sending = tokio::spawn(async move {
            for i in 0..6 {
                body.send_data(Bytes::from_static(b"0123456789"), i == 5)
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let other = connect(daemon.addr).await;
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(
                start_get(&other, "/one/x").await.0,
                StatusCode::OK,
                "the only slot is not held by a body still coming"
            );
        }
        let response = tokio::time::timeout(Duration::from_secs(10), response).await;
        let response = response.expect("an answer").unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "60 bytes reached the backend"
        );
        sending.await.unwrap();
        // Past the buffer, the stream takes the slot with what it read: the backend
        // (which reads nothing of `/slow` for 6 s) holds it.
        let request = Request::post("http://t/one/slow").body(()).unwrap();
        let (_held, mut large) = trickling.clone().send_request(request, false).unwrap();
        large
            .send_data(Bytes::from(vec![b'a'; 100_000]), false)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            start_get(&other, "/one/x").await.0,
            StatusCode::SERVICE_UNAVAILABLE,
            "a body past the buffer holds the slot"
        );
    });
}

/// The hyper engine's task has a duplicate of the socket, and the loop the socket: when the
/// task ends by itself (here on a client's protocol error, a DATA frame on stream 0), it
/// tells the loop with the connection's waker (ABI 1.10), and the connection is closed at
/// once, not when the client or the idle limit ends it.
#[test]
fn a_hyper_connection_whose_task_ended_is_closed_at_once() {
    use std::io::{Read, Write};
    let raw = raw_http1_backend();
    let daemon = daemon(&format!("/=http1://{raw}"), &[]);
    let mut socket = std::net::TcpStream::connect(daemon.addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(raw_frame(0x4, 0, 0, &[]));
    out.extend(raw_frame(0x0, 0, 0, b"on no stream"));
    socket.write_all(&out).unwrap();
    let mut input = Vec::new();
    let goaway = loop {
        match next_frame(&mut socket, &mut input) {
            Some((0x7, _, payload)) => break payload,
            Some(_) => {}
            None => panic!("the connection ended with no GOAWAY"),
        }
    };
    assert_eq!(goaway[4..8], [0, 0, 0, 1], "GOAWAY PROTOCOL_ERROR");
    // The client keeps its end open: the daemon lets the connection go (hyper's shutdown
    // of its duplicate ends the byte stream either way; the loop's count tells).
    let mut rest = Vec::new();
    let ended = socket.read_to_end(&mut rest);
    assert!(ended.is_ok(), "the byte stream did not end: {ended:?}");
    let let_go = daemon.wait_for_metric("switchyard_upgraded_connections{mode=\"event\"} 0");
    assert!(
        let_go.is_ok(),
        "the daemon held the connection 10 s after its task ended"
    );
    drop(socket);
    let lines = daemon.logs();
    assert!(!lines.contains("panicked"), "{lines}");
}

/// RFC 9113 §8.5: a CONNECT asks for a tunnel to its `:authority`. Routed as `/`, the
/// hyper engine sent `CONNECT host:port` to an HTTP/1.1 backend (a forward proxy there
/// would have opened the tunnel), and the relay reset it as malformed. Both engines answer
/// `501` now, and the connection serves on.
#[test]
fn connect_is_501_on_either_engine() {
    run(async {
        let raw = raw_http1_backend();
        for (engine, routes) in [
            ("relay", format!("/={}", backend(Arc::default()).await)),
            ("hyper", format!("/=http1://{raw}")),
        ] {
            let daemon = daemon(&routes, &[]);
            let send = connect(daemon.addr).await;
            let request = Request::connect("db.internal:5432").body(()).unwrap();
            let mut ready = send.clone().ready().await.unwrap();
            let (response, _) = ready.send_request(request, false).unwrap();
            let status = response.await.unwrap().status();
            assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{engine}");
            assert_eq!(get(&send, "/x").await.0, StatusCode::OK, "{engine}");
        }
    });
}

/// From an attacker's review: a client that opened its windows to nothing (and kept the
/// connection alive) held what backends sent it for good, 1.2 MiB a connection on the
/// relay and 5.7 MiB on hyper's engine for 1.3 KB sent. Answers the client takes nothing
/// of for `SWITCHYARD_H2C_BODY_TIMEOUT_MS` are let go now (and hyper's engine grants
/// backends the relay's windows): reset on the relay; on hyper's engine
/// their backend streams are (hyper holds the client's stream, and up to 64 KiB of it,
/// until the connection ends, as for an HTTP/1.1 backend's answer).
#[test]
fn answers_a_client_takes_nothing_of_are_let_go_after_the_body_timeout_on_either_engine() {
    run(async {
        let raw = raw_http1_backend();
        let h2 = backend(Arc::default()).await;
        for (engine, routes) in both_engines(h2, raw) {
            let daemon = daemon(&routes, &[("SWITCHYARD_H2C_BODY_TIMEOUT_MS", "1000")]);
            let send = connect_with_window(daemon.addr, 0).await;
            let mut bodies = Vec::new();
            for _ in 0..4 {
                bodies.push(large(&send).await);
            }
            if engine == "relay" {
                for mut body in bodies {
                    let ended = tokio::time::timeout(Duration::from_secs(8), body.data()).await;
                    let error = match ended {
                        Ok(Some(Err(e))) => e,
                        other => panic!("{engine}: the answer was not reset: {other:?}"),
                    };
                    assert_eq!(error.reason(), Some(Reason::CANCEL), "{engine}: {error}");
                }
            }
            let logs = daemon.wait_for_log("took nothing of").unwrap_or_else(|l| l);
            assert!(logs.contains("took nothing of"), "{engine}: {logs}");
            // Others are served as before.
            let other = connect(daemon.addr).await;
            assert_eq!(get(&other, "/x").await.0, StatusCode::OK, "{engine}");
        }
    });
}

/// From an attacker's review: the relay dials a backend connection for each route a
/// client connection uses, and nothing counted them: 48 connections of one address, within
/// its share, each using ten routes, took every descriptor of a daemon whose limit allowed
/// two a connection, and another address was not even accepted. They are counted now, in
/// all and by client address, and a stream past either count gets `503`; so are hyper's,
/// which had each client connection's own backend connections uncounted too.
#[test]
fn backend_connections_are_counted_by_client_on_either_engine() {
    run(async {
        let (a, b, c) = (
            backend(Arc::default()).await,
            backend(Arc::default()).await,
            backend(Arc::default()).await,
        );
        let routes = format!("/a/={a},/b/={b},/c/={c}");
        for engine in ["relay", "hyper"] {
            let daemon = daemon(
                &routes,
                &[
                    ("SWITCHYARD_H2C_ENGINE", engine),
                    ("SWITCHYARD_H2C_BACKENDS_MAX", "8"),
                    ("SWITCHYARD_H2C_BACKENDS_PER_CLIENT", "2"),
                ],
            );
            let tcp = TcpStream::connect(daemon.addr).await.unwrap();
            let (send, connection) = client::handshake(tcp).await.unwrap();
            let connection = tokio::spawn(connection);
            assert_eq!(get(&send, "/a/x").await, (StatusCode::OK, "/a/x".into()));
            assert_eq!(get(&send, "/b/x").await, (StatusCode::OK, "/b/x".into()));
            let (status, text) = get(&send, "/c/x").await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{engine}: {text}");
            assert!(
                text.contains("SWITCHYARD_H2C_BACKENDS_PER_CLIENT"),
                "{engine}: {text}"
            );
            assert!(
                (daemon.metrics()).contains("switchyard_h2c_backend_connections 2"),
                "{engine}"
            );
            // Its routes in use go on; another connection of the same address gets none.
            assert_eq!(get(&send, "/a/y").await.0, StatusCode::OK, "{engine}");
            let other = connect(daemon.addr).await;
            let refused = get(&other, "/a/x").await.0;
            assert_eq!(refused, StatusCode::SERVICE_UNAVAILABLE, "{engine}");
            // Given back when the client connection closes (and its backend connections
            // with it), if not sooner (the relay's close 5 s after their last stream).
            connection.abort();
            let _ = connection.await;
            daemon
                .wait_for_metric("switchyard_h2c_backend_connections 0")
                .unwrap_or_else(|m| panic!("{engine}: not given back: {m}"));
            assert_eq!(get(&other, "/c/x").await.0, StatusCode::OK, "{engine}");
        }
    });
}

/// From a review: the wait for a client that takes nothing of an answer was the
/// connection's, so a client taking one stream's answer slowly kept every other stream's
/// held for good. Each stream's wait is its own: lazily taken answers are reset after the
/// body time-out while another stream is read on.
#[test]
fn an_answer_taken_slowly_does_not_keep_others_the_client_takes_nothing_of() {
    run(async {
        let h2 = backend(Arc::default()).await;
        let daemon = daemon(
            &format!("/={h2}"),
            &[("SWITCHYARD_H2C_BODY_TIMEOUT_MS", "1000")],
        );
        let wide = client::Builder::new()
            .initial_connection_window_size(16 << 20)
            .clone();
        let send = connect_by(daemon.addr, &wide).await;
        let lazy = [large(&send).await, large(&send).await];
        let mut slow = large(&send).await;
        // A frame every 100 ms: the slow stream moves all along (its 1 MiB takes 6 s).
        let reader = tokio::spawn(async move {
            while let Some(chunk) = slow.data().await {
                let chunk = chunk.unwrap();
                let _ = slow.flow_control().release_capacity(chunk.len());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let began = std::time::Instant::now();
        for mut body in lazy {
            let end = loop {
                match tokio::time::timeout(Duration::from_secs(4), body.data()).await {
                    Ok(Some(Ok(_))) => {} // what it was sent before its window shut
                    other => break other,
                }
            };
            match end {
                Ok(Some(Err(e))) => assert_eq!(e.reason(), Some(Reason::CANCEL), "{e}"),
                other => panic!("a lazily taken answer was not reset: {other:?}"),
            }
        }
        assert!(
            began.elapsed() < Duration::from_secs(3),
            "reset only once the slow stream stopped: {:?}",
            began.elapsed()
        );
        reader
            .await
            .expect("the slow stream is read to its end, not reset");
    });
}

/// From a review: with a 256 KiB window for each backend, eight streams whose answers the
/// client took lazily (each holding the 64 KiB its backend stream may send) stopped every
/// other stream of the connection to that backend until the body time-out reset them. A
/// stream is served beside a few such streams, on either engine.
#[test]
fn streams_taken_lazily_do_not_stop_the_others_to_their_backend() {
    run(async {
        let raw = raw_http1_backend();
        let h2 = backend(Arc::default()).await;
        for (engine, routes) in both_engines(h2, raw) {
            let daemon = daemon(&routes, &[]);
            let wide = client::Builder::new()
                .initial_connection_window_size(16 << 20)
                .clone();
            let send = connect_by(daemon.addr, &wide).await;
            let mut lazy = Vec::new();
            for _ in 0..8 {
                lazy.push(large(&send).await); // never read
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let served = tokio::time::timeout(Duration::from_secs(5), get(&send, "/x")).await;
            assert_eq!(
                served.map(|(status, _)| status).ok(),
                Some(StatusCode::OK),
                "{engine}: a stream beside 8 lazy ones"
            );
            drop(lazy);
        }
    });
}

/// The forwarding fields are the daemon's in trailers too: a client that declares
/// `X-Real-IP` a trailer and sends it there never reaches a backend with it (an HTTP/1.1
/// backend that merges trailers into the head read the client's word after ours). The
/// other trailers go on, on either engine.
#[test]
fn trailers_carry_no_forwarding_fields_to_a_backend_on_either_engine() {
    run(async {
        let raw = raw_http1_backend();
        for (engine, routes, path) in [
            (
                "relay",
                format!("/={}", backend(Arc::default()).await),
                "/echo",
            ),
            ("hyper", format!("/=http1://{raw}"), "/trailers"),
        ] {
            let daemon = daemon(&routes, &[]);
            let send = connect(daemon.addr).await;
            let request = Request::post(format!("http://t{path}"))
                .header("trailer", "x-sum, x-real-ip, x_forwarded_for")
                .body(())
                .unwrap();
            let mut ready = send.clone().ready().await.unwrap();
            let (response, mut upload) = ready.send_request(request, false).unwrap();
            upload.send_data(Bytes::from_static(b"abc"), false).unwrap();
            let mut trailers = HeaderMap::new();
            trailers.insert("x-sum", HeaderValue::from_static("7"));
            trailers.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
            trailers.insert("x_forwarded_for", HeaderValue::from_static("6.6.6.7"));
            upload.send_trailers(trailers).unwrap();
            let response = response.await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{engine}");
            let mut body = response.into_body();
            let mut text = Vec::new();
            while let Some(chunk) = body.data().await {
                text.extend_from_slice(&chunk.unwrap());
            }
            // What the backend received as trailers: the relay's backend sends them back
            // as its own, the HTTP/1.1 one as its answer.
            let seen = match engine {
                "relay" => {
                    let back = body.trailers().await.unwrap().expect("trailers");
                    let mut seen: Vec<String> = back
                        .iter()
                        .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap()))
                        .collect();
                    seen.sort();
                    seen.join("\n")
                }
                _ => String::from_utf8(text).unwrap(),
            };
            assert!(seen.contains("x-sum: 7"), "{engine}: {seen}");
            assert!(!seen.contains("6.6.6."), "{engine}: {seen}");
        }
    });
}

/// A backend that answers a request as it reads it (here `/early`: at once) gets nothing
/// from an `http1://` route until 64 KiB or the end of the body came; an
/// `http1-stream://` route sends the body from its first byte, and the answer comes back
/// while the upload goes on.
#[test]
fn an_http1_stream_route_sends_bodies_from_their_first_byte() {
    run(async {
        let raw = raw_http1_backend();
        let daemon = daemon(
            &format!("/stream/=http1-stream://{raw},/read/=http1://{raw}"),
            &[],
        );
        let send = connect(daemon.addr).await;
        let mut answers = Vec::new();
        let mut uploads = Vec::new();
        for path in ["/stream/early", "/read/early"] {
            let request = Request::post(format!("http://t{path}")).body(()).unwrap();
            let mut ready = send.clone().ready().await.unwrap();
            let (response, mut body) = ready.send_request(request, false).unwrap();
            body.send_data(Bytes::from_static(b"the first line\n"), false)
                .unwrap();
            answers.push(tokio::time::timeout(Duration::from_secs(2), response));
            uploads.push(body);
        }
        let read = answers.pop().unwrap().await;
        let streamed = answers.pop().unwrap().await;
        let streamed = streamed
            .expect("an answer while the upload goes on")
            .unwrap();
        assert_eq!(streamed.status(), StatusCode::OK);
        assert!(
            read.is_err(),
            "an http1:// route waits for the body: {read:?}"
        );
    });
}

/// From a review of the buffer: hyper ends a request body the client reset with
/// `NO_ERROR` as if it were whole, and a body of no declared length read to that "end"
/// went to the backend as a complete request of the bytes that came (8 to 18 times in 20,
/// and every time here before the fix). A stream reset while its body is read never
/// reaches a backend now; the daemon serves on.
#[test]
fn a_body_reset_with_no_error_while_read_never_reaches_the_backend() {
    use std::io::{Read, Write};
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let raw = listener.local_addr().unwrap();
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let (Ok(mut stream), record) = (stream, record.clone()) else {
                return;
            };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                    // An answer for each head (a body that comes with it, or after, is
                    // recorded all the same).
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        let _ = stream.write_all(ok);
                    }
                }
            });
        }
    });
    run(async {
        let daemon = daemon(&format!("/one/=http1://{raw}"), &[]);
        // Ten client connections, each a POST answered (so that a backend connection
        // waits in the pool: the cut request goes at once), then a POST's HEADERS, 100
        // bytes of DATA and RST_STREAM NO_ERROR, written one after the other as a client
        // cancelling an upload writes them; then a GET on another.
        let block = |method: u8, path: &str| {
            let mut block = vec![method, 0x86, 0x04, path.len() as u8];
            block.extend(path.as_bytes());
            block.extend([0x01, 0x01, b't']);
            block
        };
        let addr = daemon.addr;
        let answers = tokio::task::spawn_blocking(move || {
            let mut answers = Vec::new();
            for _ in 0..10 {
                // A connection of its own, its first stream a POST answered, then the cut.
                let mut warm = raw_frame(0x1, 0x4, 1, &block(0x83, "/one/warm"));
                warm.extend(raw_frame(0x0, 0x1, 1, b"w"));
                let mut socket = std::net::TcpStream::connect(addr).unwrap();
                let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
                hello.extend(raw_frame(0x4, 0, 0, &[]));
                hello.extend(warm);
                socket.write_all(&hello).unwrap();
                std::thread::sleep(Duration::from_millis(100));
                let cut = raw_frame(0x1, 0x4, 3, &block(0x83, "/one/cut"));
                socket.write_all(&cut).unwrap();
                socket
                    .write_all(&raw_frame(0x0, 0, 3, &[b'c'; 100]))
                    .unwrap();
                let reset = raw_frame(0x3, 0, 3, &0u32.to_be_bytes());
                socket.write_all(&reset).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
            let get = raw_frame(0x1, 0x5, 1, &block(0x82, "/one/after"));
            answers.extend(frames_until(addr, &get, 0x1));
            answers
        });
        let answers = answers.await.unwrap();
        assert_eq!(
            answers.last().unwrap().1[0],
            0x88,
            "`:status: 200` for the GET"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let seen = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(seen.contains("GET /one/after"), "{seen}");
    assert!(
        !seen.contains("/one/cut"),
        "a body cut short went on: {seen}"
    );
}

/// A client that asks for a large answer and then takes none of it (no window given back)
/// held the stream's backend connection, and its slot, for as long as it kept the
/// connection. After `SWITCHYARD_H2C_BODY_TIMEOUT_MS` with nothing taken the backend
/// connection is closed and the slot serves the client's next stream.
#[test]
fn an_answer_the_client_takes_nothing_of_gives_its_slot_back() {
    run(async {
        let daemon = one_slot_daemon();
        let taking_nothing = connect(daemon.addr).await;
        let request = Request::get("http://t/one/big").body(()).unwrap();
        let (response, _) = taking_nothing.clone().send_request(request, true).unwrap();
        // Kept, never read: dropped, h2 would reset the stream.
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let next = connect(daemon.addr).await;
        assert_eq!(
            start_get(&next, "/one/x").await.0,
            StatusCode::SERVICE_UNAVAILABLE,
            "the slot is held while the answer may still be taken"
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(
            get(&next, "/one/x").await.0,
            StatusCode::OK,
            "the slot is back"
        );
        drop(response);
    });
}

/// Routes to the HTTP/2 backend `h2` for each engine: alone (the relay's), and beside an
/// `http1://` route to `raw` (hyper's, which `auto` then chooses).
fn both_engines(h2: SocketAddr, raw: SocketAddr) -> [(&'static str, String); 2] {
    [
        ("relay", format!("/={h2}")),
        ("hyper", format!("/={h2},/http1/=http1://{raw}")),
    ]
}

/// `SWITCHYARD_RESPONSE_HEADERS` on either engine's HTTP/2 answers over cleartext: the
/// operator's fields on a backend's `200`, a field the backend sent of the same name kept
/// as it sent it, `Strict-Transport-Security` not (cleartext), and nothing on an error.
#[test]
fn the_operators_fields_go_on_http2_answers_of_either_engine() {
    run(async {
        let backend = backend(Arc::new(Seen::default())).await;
        let raw = raw_http1_backend();
        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let extra = "Strict-Transport-Security: max-age=63072000\nX-Frame-Options: DENY\n\
                     X-T-Own: operator\nX-Big: operator";
        for (engine, routes) in both_engines(backend, raw) {
            // (An `http1://` route makes the hyper engine serve every route.)
            let routes = match engine {
                "relay" => format!("{routes},/refused={refused}"),
                _ => format!("{routes},/http1/refused=http1://{refused}"),
            };
            let daemon = daemon(&routes, &[("SWITCHYARD_RESPONSE_HEADERS", extra)]);
            let send = connect(daemon.addr).await;
            let (path, own) = match engine {
                "relay" => ("/fields/1", "x-t-own"),
                _ => ("/http1/bighead/4", "x-big"),
            };
            let request = Request::get(format!("http://t{path}"))
                .header("x-t-own", "aaaa")
                .body(())
                .unwrap();
            let served = answer(&send, request).await;
            assert_eq!(served.status(), StatusCode::OK, "{engine}");
            let values = |name: &str| -> Vec<String> {
                (served.headers().get_all(name).iter())
                    .map(|v| v.to_str().unwrap().to_string())
                    .collect()
            };
            assert_eq!(values("x-frame-options"), ["DENY"], "{engine}");
            assert_eq!(values(own), ["aaaa"], "{engine}: the backend's own field");
            assert!(values("strict-transport-security").is_empty(), "{engine}");
            let failing = match engine {
                "relay" => "/refused/x",
                _ => "/http1/refused/x",
            };
            let request = Request::get(format!("http://t{failing}")).body(()).unwrap();
            let failed = answer(&send, request).await;
            assert!(
                failed.status().is_server_error(),
                "{engine}: {}",
                failed.status()
            );
            assert!(
                failed.headers().get("x-frame-options").is_none(),
                "{engine}"
            );
        }
    });
}

/// An HTTP/2 client connection that grants `window` bytes a stream.
pub(crate) async fn connect_with_window(
    addr: SocketAddr,
    window: u32,
) -> client::SendRequest<Bytes> {
    connect_by(addr, client::Builder::new().initial_window_size(window)).await
}

/// An HTTP/2 client connection to the daemon, with prior knowledge, as `builder` makes it.
pub(crate) async fn connect_by(
    addr: SocketAddr,
    builder: &client::Builder,
) -> client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = builder.handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// `GET /large` (1 MiB): its answer's body, not read.
async fn large(send: &client::SendRequest<Bytes>) -> h2::RecvStream {
    let request = Request::get("http://t/large").body(()).unwrap();
    let mut ready = send.clone().ready().await.unwrap();
    let (response, _) = ready.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body()
}

/// From an attacker's review: the plugin's own answers (here a `502` for a backend that
/// refuses, a `408` for a body that never came) kept the stream's HTTP/1.1 backend slot
/// for as long as the client did not take them, and a client that grants no window never
/// does: four addresses held every slot. Such an answer holds none.
#[test]
fn answers_of_the_plugins_own_hold_no_backend_slot_while_the_client_takes_nothing() {
    run(async {
        let raw = raw_http1_backend();
        let daemon = daemon(
            &format!("/dead/=http1://127.0.0.1:1,/one/=http1://{raw}"),
            &[
                ("SWITCHYARD_H2C_HTTP1_PER_CLIENT", "2"),
                ("SWITCHYARD_H2C_BODY_TIMEOUT_MS", "300"),
            ],
        );
        let no_window = connect_with_window(daemon.addr, 0).await;
        let request = Request::get("http://t/dead/x").body(()).unwrap();
        let (refused, _) = no_window.clone().send_request(request, true).unwrap();
        let request = Request::post("http://t/one/x")
            .header("content-length", "10")
            .body(())
            .unwrap();
        let (timed_out, _body) = no_window.clone().send_request(request, false).unwrap();
        let (refused, timed_out) = (refused.await.unwrap(), timed_out.await.unwrap());
        assert_eq!(
            (refused.status(), timed_out.status()),
            (StatusCode::BAD_GATEWAY, StatusCode::REQUEST_TIMEOUT)
        );
        let other = connect(daemon.addr).await;
        assert_eq!(
            get(&other, "/one/x").await.0,
            StatusCode::OK,
            "slots are free"
        );
        drop((refused, timed_out));
    });
}

/// From an attacker's review: a backend that answers before the request body ends (an
/// early `401` or `413`) and reads on. The answer's end gave the stream's slot back while
/// hyper kept sending the body on the backend connection, so a client that trickled its
/// bodies held backend connections no count saw: 983 from one address, every descriptor
/// of a daemon at 1,024. Now the answer's end stops the upload and the backend connection
/// closes (RFC 9113 §8.1: the answer did not need the rest). Here the limits allow 2
/// streams a connection and 4 in all; 20 streams answered early, then trickling, leave
/// the backend no connection.
#[test]
fn an_answer_before_the_request_ends_stops_the_upload_and_its_backend_connection() {
    run(async {
        let (raw, open) = raw_http1_backend_counted();
        let daemon = daemon(
            &format!("/one/=http1://{raw}"),
            &[
                ("SWITCHYARD_H2C_HTTP1_MAX", "4"),
                ("SWITCHYARD_H2C_HTTP1_PER_CLIENT", "2"),
                ("SWITCHYARD_H2C_HTTP1_PER_CONNECTION", "2"),
            ],
        );
        let send = connect(daemon.addr).await;
        let mut uploads = Vec::new();
        for _ in 0..20 {
            let request = Request::post("http://t/one/early").body(()).unwrap();
            let mut ready = send.clone().ready().await.unwrap();
            let (response, mut body) = ready.send_request(request, false).unwrap();
            // Past the 64 KiB read before a backend is taken (a smaller body that stops
            // never reaches one: `a_body_trickling_in_holds_no_http1_slot`).
            body.send_data(Bytes::from(vec![b'x'; 70_000]), false)
                .unwrap();
            let response = response.await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let mut answer = response.into_body();
            while let Some(chunk) = answer.data().await {
                let _ = answer.flow_control().release_capacity(chunk.unwrap().len());
            }
            uploads.push(body);
        }
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for body in uploads.iter_mut() {
                let _ = body.send_data(Bytes::from_static(b"y"), false);
            }
        }
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while open.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            open.load(Ordering::SeqCst),
            0,
            "backend connections left open"
        );
    });
}

/// From an attacker's review: one stream whose backend reads nothing took the whole 1 MiB
/// window of the client's connection (hyper's window a stream was as large), so another
/// upload on it could send nothing, and after SWITCHYARD_H2C_BODY_TIMEOUT_MS was answered
/// `408` for a silence that was not its client's. A stream may now hold 64 KiB of it.
#[test]
fn an_upload_whose_neighbour_is_not_read_goes_on() {
    run(async {
        let raw = raw_http1_backend();
        let daemon = daemon(
            &format!("/one/=http1://{raw}"),
            &[("SWITCHYARD_H2C_BODY_TIMEOUT_MS", "1500")],
        );
        let send = connect(daemon.addr).await;
        let request = Request::post("http://t/one/slow").body(()).unwrap();
        let (_unread, mut stalled) = send.clone().send_request(request, false).unwrap();
        stalled
            .send_data(Bytes::from(vec![b'a'; 4 << 20]), false)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        // 30 bytes, one every 100 ms: a client sending steadily.
        let request = Request::post("http://t/one/x")
            .header("content-length", "30")
            .body(())
            .unwrap();
        let (response, mut body) = send.clone().send_request(request, false).unwrap();
        let sending = tokio::spawn(async move {
            for i in 0..30 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                body.send_data(Bytes::from_static(b"z"), i == 29).unwrap();
            }
        });
        let response = tokio::time::timeout(Duration::from_secs(10), response).await;
        let status = response.expect("an answer").unwrap().status();
        assert_eq!(status, StatusCode::OK, "the steady upload was cut");
        sending.await.unwrap();
        drop(stalled);
    });
}

/// From a review: streams waiting for one of a connection's HTTP/1.1 permits are granted
/// their 64 KiB window when they open but not read, so 17 waiting uploads took the client
/// connection's whole 1 MiB window; the upload holding the permit could send nothing and
/// got `408` (a client sending 33 files at once, at the default 16 permits). At most
/// `HTTP1_WAITING_MAX` (8) now wait; the others get `503` with `Retry-After` at once.
#[test]
fn streams_waiting_for_a_permit_leave_the_served_upload_room() {
    run(async {
        let raw = raw_http1_backend();
        let daemon = daemon(
            &format!("/one/=http1://{raw}"),
            &[
                ("SWITCHYARD_H2C_HTTP1_PER_CONNECTION", "1"),
                ("SWITCHYARD_H2C_BODY_TIMEOUT_MS", "1500"),
            ],
        );
        let send = connect(daemon.addr).await;
        // The served upload: 60 KiB at 20 KiB/s.
        const PARTS: usize = 60;
        let request = Request::post("http://t/one/x")
            .header("content-length", (PARTS * 1024).to_string())
            .body(())
            .unwrap();
        let (response, mut body) = send.clone().send_request(request, false).unwrap();
        let sending = tokio::spawn(async move {
            for i in 0..PARTS {
                let part = Bytes::from(vec![b'a'; 1024]);
                body.send_data(part, i == PARTS - 1).unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // 17 more, each sending 100 KB at once (64 KiB of it allowed by its window).
        let mut waiting = Vec::new();
        for _ in 0..17 {
            let request = Request::post("http://t/one/x")
                .header("content-length", "100000")
                .body(())
                .unwrap();
            let mut ready = send.clone().ready().await.unwrap();
            let (answer, mut body) = ready.send_request(request, false).unwrap();
            body.send_data(Bytes::from(vec![b'b'; 100_000]), true)
                .unwrap();
            waiting.push((answer, body));
        }
        let response = tokio::time::timeout(Duration::from_secs(10), response).await;
        let status = response.expect("an answer").unwrap().status();
        assert_eq!(status, StatusCode::OK, "the served upload was cut");
        sending.await.unwrap();
        let mut refused = 0;
        for (answer, _body) in waiting {
            let answer = tokio::time::timeout(Duration::from_secs(10), answer).await;
            let answer = answer.expect("every stream is answered").unwrap();
            if answer.status() == StatusCode::SERVICE_UNAVAILABLE {
                assert!(answer.headers().contains_key("retry-after"));
                refused += 1;
            } else {
                assert_eq!(answer.status(), StatusCode::OK);
            }
        }
        assert_eq!(refused, 17 - 8, "past 8 waiting, streams are refused");
    });
}

/// The README's bound on hyper's HTTP/1.1 reader: a response head must fit in 64 KiB
/// (`502` past it); the connection serves on.
#[test]
fn an_http1_response_head_over_64_kib_is_a_502() {
    run(async {
        let raw = raw_http1_backend();
        let daemon = daemon(&format!("/one/=http1://{raw}"), &[]);
        let send = connect(daemon.addr).await;
        assert_eq!(get(&send, "/one/bighead/40000").await.0, StatusCode::OK);
        let (status, _) = get(&send, "/one/bighead/70000").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(get(&send, "/one/x").await.0, StatusCode::OK);
    });
}

/// RFC 7541 §2.3.2, RFC 9113 §4.3: the relay's HPACK tables hold only while every block is
/// written to the client in the order it went through the table. Eight streams at a time,
/// each answered with a 103, a final answer and trailers (fields repeated across them),
/// half with a body larger than the client's stream window, so their trailers wait in the
/// relay behind data while the other streams' blocks pass (a quarter of the 103s among
/// them); the client takes the small
/// answers first, then the large; every block arrives with the fields the backend sent.
#[test]
fn interim_answers_final_answers_and_trailers_interleaved_across_streams_keep_their_fields() {
    run(async {
        let backend = backend(Arc::new(Seen::default())).await;
        let daemon = daemon(&format!("/={backend}"), &[]);
        // The large bodies (40,000 bytes) pass the client's stream window and fit in the
        // relay's window toward the backend (65,535), so their trailers reach the relay and
        // wait there.
        let tcp = TcpStream::connect(daemon.addr).await.unwrap();
        let (send, connection) = client::Builder::new()
            .initial_window_size(16 * 1024)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap();
        let connection = tokio::spawn(connection);
        for round in 0..3 {
            let mut heads = Vec::new();
            for i in round * 8..round * 8 + 8_u64 {
                let request = Request::get(format!("http://t/interleaved/{i}"));
                let (response, _) = (send.clone().ready().await.unwrap())
                    .send_request(request.body(()).unwrap(), true)
                    .unwrap();
                heads.push((i, response));
            }
            let mut bodies = Vec::new();
            for (i, mut response) in heads {
                let hint = std::future::poll_fn(|cx| response.poll_informational(cx))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(hint.status(), StatusCode::EARLY_HINTS, "stream {i}");
                let link = format!("</s{i}.css>; rel=preload");
                assert_eq!(hint.headers()["link"], link.as_str(), "stream {i}");
                assert_eq!(hint.headers()["x-t-same"], "same", "stream {i}");
                let response = response.await.unwrap();
                assert_eq!(response.status(), StatusCode::OK, "stream {i}");
                let answer = format!("a{i}");
                assert_eq!(response.headers()["x-t-answer"], answer.as_str());
                assert_eq!(response.headers()["x-t-same"], "same", "stream {i}");
                bodies.push((i, response.into_body()));
            }
            // The small answers first (their trailers pass the large answers' held ones),
            // then the large.
            bodies.sort_by_key(|&(i, _)| i.is_multiple_of(2));
            for (i, mut body) in bodies {
                let mut len = 0;
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.unwrap();
                    let _ = body.flow_control().release_capacity(chunk.len());
                    len += chunk.len();
                }
                assert_eq!(
                    len,
                    if i.is_multiple_of(2) { 40_000 } else { 100 },
                    "stream {i}"
                );
                let trailers = body.trailers().await.unwrap().unwrap();
                let trailer = format!("t{i}");
                assert_eq!(trailers["x-t-trailer"], trailer.as_str(), "stream {i}");
                assert_eq!(trailers["x-t-same"], "same", "stream {i}");
            }
        }
        assert!(!connection.is_finished(), "the connection serves on");
    });
}
