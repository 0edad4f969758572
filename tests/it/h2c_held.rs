//! What the h2c relay holds for a client and for how long: one address's budget over all
//! its connections (`SWITCHYARD_H2C_HELD_PER_CLIENT`), answers a client takes nothing of and
//! uploads a backend takes nothing of, and whole answers whose backend let go of them first.
//! With the `h2` crate as client and backend, and a backend of raw frames where a backend's
//! own way of ending a stream matters.

use crate::h2c_proxy::{
    backend, connect, connect_from_127_0_0_2, connect_with_window, daemon, get, raw_frame, run,
    Seen,
};
use bytes::Bytes;
use h2::{client, Reason};
use http::{Request, StatusCode};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the raw backend does once it has sent a whole answer.
#[derive(Clone, Copy)]
enum Then {
    /// Nothing: it reads none of the request body, nor resets it (nghttp2's way).
    Nothing,
    /// RST_STREAM with NO_ERROR: it wants no more of the request (Go's way, RFC 9113 §8.1).
    Reset,
    /// GOAWAY, and closes the connection (nginx at `keepalive_requests`).
    Close,
}

/// Bytes of each answer of the raw backend (one stream's window holds them).
const ANSWER: usize = 60_000;

/// An HTTP/2 backend of raw frames: each request is answered `200` and [`ANSWER`] bytes at
/// once, whole, then as `then` says. It reads nothing else and sends no window updates.
fn raw_backend(then: Then) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(socket) = socket else { return };
            std::thread::spawn(move || serve_raw(socket, then));
        }
    });
    addr
}

fn serve_raw(mut socket: TcpStream, then: Then) {
    let mut input = Vec::new();
    let mut buf = [0u8; 65_536];
    let mut preface = false;
    let _ = socket.write_all(&raw_frame(0x4, 0, 0, &[]));
    loop {
        if !preface && input.len() >= 24 {
            input.drain(..24);
            preface = true;
        }
        while preface && input.len() >= 9 {
            let len = u32::from_be_bytes([0, input[0], input[1], input[2]]) as usize;
            if input.len() < 9 + len {
                break;
            }
            let frame: Vec<u8> = input.drain(..9 + len).collect();
            let (kind, flags) = (frame[3], frame[4]);
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & !(1 << 31);
            let mut out = Vec::new();
            match kind {
                0x4 if flags & 0x1 == 0 => out.extend(raw_frame(0x4, 0x1, 0, &[])),
                0x1 => {
                    out.extend(raw_frame(0x1, 0x4, stream, &[0x88])); // :status 200
                    let body = vec![b'a'; ANSWER];
                    let mut parts = body.chunks(16_384).peekable();
                    while let Some(part) = parts.next() {
                        let end = if parts.peek().is_none() { 0x1 } else { 0 };
                        out.extend(raw_frame(0x0, end, stream, part));
                    }
                    match then {
                        Then::Nothing => {}
                        Then::Reset => out.extend(raw_frame(0x3, 0, stream, &[0, 0, 0, 0])),
                        Then::Close => {
                            let mut goaway = stream.to_be_bytes().to_vec();
                            goaway.extend([0, 0, 0, 0]);
                            out.extend(raw_frame(0x7, 0, 0, &goaway));
                            let _ = socket.write_all(&out);
                            return; // closed
                        }
                    }
                }
                _ => {}
            }
            if socket.write_all(&out).is_err() {
                return;
            }
        }
        match socket.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => input.extend_from_slice(&buf[..n]),
        }
    }
}

/// Asks for `count` answers of `/large` (1 MiB each) on `send`, waiting for none.
async fn ask_large(send: &client::SendRequest<Bytes>, count: usize) -> Vec<client::ResponseFuture> {
    let mut answers = Vec::new();
    for _ in 0..count {
        let request = Request::get("http://t/large").body(()).unwrap();
        let mut ready = send.clone().ready().await.unwrap();
        answers.push(ready.send_request(request, true).unwrap().0);
    }
    answers
}

/// `switchyard_h2c_held_bytes` now.
fn held_bytes(daemon: &crate::support::Daemon) -> usize {
    let metrics = daemon.metrics();
    (metrics.lines())
        .find_map(|l| l.strip_prefix("switchyard_h2c_held_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no held bytes in the metrics:\n{metrics}"))
}

/// `switchyard_h2c_held_bytes` once `enough` holds of it, or after 10 s (the backends'
/// answers take as long as a loaded machine makes them, and the page is rendered again at
/// most once a second): the last value seen.
async fn held_bytes_once(daemon: &crate::support::Daemon, enough: impl Fn(usize) -> bool) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = held_bytes(daemon);
        if enough(held) || Instant::now() > deadline {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The most `switchyard_h2c_held_bytes` showed from now until `enough` held of that most
/// (or 10 s passed), and for a fresh page after it (each loop renders the page at most
/// once a second): a relay still filling past its budget when `enough` first held is
/// seen doing so.
async fn most_held(daemon: &crate::support::Daemon, enough: impl Fn(usize) -> bool) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut most = 0;
    while !enough(most) && Instant::now() < deadline {
        most = most.max(held_bytes(daemon));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < fresh {
        most = most.max(held_bytes(daemon));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    most
}

/// From an attacker's review: what the relay held for a client that takes no answer was
/// bounded per connection only (1 MiB a backend connection) and one address may hold 2,500
/// connections. Now an address's connections together hold `SWITCHYARD_H2C_HELD_PER_CLIENT`
/// at most: past it they read their backends no further, and what the client took nothing
/// of for a second is reset (not after the 30 s body time-out). Another address is served
/// all along, and so is the same address once the held answers are let go.
#[test]
fn what_one_address_takes_nothing_of_is_held_to_its_budget_over_its_connections() {
    run(async {
        let h2 = backend(Arc::default()).await;
        let budget = 1 << 20;
        let daemon = daemon(
            &format!("/={h2}"),
            &[("SWITCHYARD_H2C_HELD_PER_CLIENT", &budget.to_string())],
        );
        // Six connections granting no window, each asking for 16 answers of 1 MiB: 1 MiB
        // held a connection, its backend's connection window, without the budget.
        let mut answers = Vec::new();
        for _ in 0..6 {
            let send = connect_with_window(daemon.addr, 0).await;
            answers.extend(ask_large(&send, 16).await);
        }
        // The first connection's backend is granted the budget's room and holds nearly all
        // of it; a second's first answer takes the address over it, and a second later the
        // first connection's answers are let go. The peak lasts about that long, and a
        // loaded machine may bring the first look later (seen once in a whole run: 5 x
        // 65,535 held by then). Either the peak is seen or its end is in the log; what is
        // held never passes the budget (six times it, without the budget), looked at once
        // more after either.
        let over = "while its address holds SWITCHYARD_H2C_HELD_PER_CLIENT";
        let let_go = || daemon.logs().contains(over);
        let held = most_held(&daemon, |held| held >= budget / 2 || let_go()).await;
        assert!(
            held < budget + (512 << 10),
            "{held} bytes held for one address, budget {budget}"
        );
        assert!(
            held >= budget / 2 || let_go(),
            "{held} bytes held for one address, budget {budget}, and none let go for it"
        );
        // Another address is served meanwhile.
        let other = connect_from_127_0_0_2(daemon.addr).await;
        let (status, body) = get(&other, "/large").await;
        assert_eq!((status, body.len()), (StatusCode::OK, 1 << 20));
        // What the client took nothing of is let go in seconds, all but the last budget's
        // worth (held to the body time-out, as any client's answers are).
        let ended: Vec<_> = (answers.into_iter())
            .map(|answer| {
                tokio::spawn(tokio::time::timeout(Duration::from_secs(10), async move {
                    let mut body = answer.await?.into_body();
                    while body.data().await.transpose()?.is_some() {}
                    Ok::<_, h2::Error>(())
                }))
            })
            .collect();
        let mut cancelled = 0;
        for task in ended {
            if let Ok(Err(e)) = task.await.unwrap() {
                assert_eq!(e.reason(), Some(Reason::CANCEL), "{e}");
                cancelled += 1;
            }
        }
        // (Each backend connection past the first is granted no window past 64 KiB from the
        // budget: its streams' answers come one at a time, as those before them are let go.)
        // Without the budget none is reset before the 30 s body time-out; unloaded, 16 and
        // more are in 10 s, but a cycle of holding and letting go takes longer on a loaded
        // machine (9 with two busy loops on two cores, twice in eight runs): at least one a
        // connection.
        assert!(cancelled >= 6, "{cancelled} of 96 answers reset in 10 s");
        let logs = daemon
            .wait_for_log("SWITCHYARD_H2C_HELD_PER_CLIENT")
            .unwrap_or_else(|l| l);
        assert!(logs.contains("took nothing of"), "{logs}");
        let again = connect(daemon.addr).await;
        assert_eq!(get(&again, "/x").await.0, StatusCode::OK);
    });
}

/// While its address holds its budget, a connection's backends are read no further, but
/// not while uploads wait for a backend's windows: only its WINDOW_UPDATEs let them go
/// (reading nothing from it, four uploads over a small budget stalled, and were ended with
/// `504` a second later).
#[test]
fn uploads_go_on_while_their_address_holds_its_budget() {
    run(async {
        let h2 = backend(Arc::default()).await;
        let daemon = daemon(
            &format!("/={h2}"),
            &[("SWITCHYARD_H2C_HELD_PER_CLIENT", "65536")],
        );
        let send = connect(daemon.addr).await;
        let mut uploads = Vec::new();
        for _ in 0..4 {
            let request = Request::post("http://t/count").body(()).unwrap();
            let mut ready = send.clone().ready().await.unwrap();
            let (response, mut upload) = ready.send_request(request, false).unwrap();
            uploads.push(tokio::spawn(async move {
                let mut left = 1 << 20;
                while left > 0 {
                    upload.reserve_capacity(left);
                    let room = std::future::poll_fn(|cx| upload.poll_capacity(cx)).await;
                    let n = room
                        .expect("capacity")
                        .expect("the stream is open")
                        .min(left);
                    upload
                        .send_data(Bytes::from(vec![b'u'; n]), n == left)
                        .unwrap();
                    left -= n;
                }
                let response = response.await.expect("an answer");
                let status = response.status();
                let mut body = response.into_body();
                let mut text = Vec::new();
                while let Some(chunk) = body.data().await {
                    text.extend_from_slice(&chunk.unwrap());
                }
                (status, String::from_utf8(text).unwrap())
            }));
        }
        for upload in uploads {
            let done = tokio::time::timeout(Duration::from_secs(10), upload).await;
            let answer = done.expect("uploaded within 10 s").unwrap();
            assert_eq!(answer, (StatusCode::OK, (1 << 20).to_string()));
        }
    });
}

/// A request body its backend takes nothing of (its window shut, no answer) held what the
/// relay read of it, and the stream, for as long as the connection lived. Now the body
/// time-out ends it as it ends an answer the client takes nothing of: cancelled at the
/// backend, and `504` to the client (nginx's `proxy_send_timeout`).
#[test]
fn an_upload_its_backend_takes_nothing_of_is_answered_504_after_the_body_timeout() {
    run(async {
        let seen = Arc::new(Seen::default());
        let h2 = backend(seen.clone()).await;
        let daemon = daemon(
            &format!("/={h2}"),
            &[("SWITCHYARD_H2C_BODY_TIMEOUT_MS", "1000")],
        );
        let send = connect(daemon.addr).await;
        let request = Request::post("http://t/wait-for-reset").body(()).unwrap();
        let mut ready = send.clone().ready().await.unwrap();
        let (response, mut upload) = ready.send_request(request, false).unwrap();
        upload
            .send_data(Bytes::from(vec![b'u'; 1 << 20]), false)
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(6), response).await;
        let response = response
            .expect("answered within the body time-out")
            .unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        for _ in 0..100 {
            if !seen.resets.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(*seen.resets.lock().unwrap(), ["/wait-for-reset"]);
        // The connection serves on.
        assert_eq!(get(&send, "/x").await.0, StatusCode::OK);
    });
}

/// hyper's engine cannot see what a backend connection holds for a client that takes
/// nothing, only that its window bounds it (1 MiB): 400 connections of one address granting
/// no window held 505 MiB. So an address's budget of held bytes is a backend connection per
/// MiB of it there; past it, `503` saying so, and another address is served.
#[test]
fn hyper_gives_an_address_a_backend_connection_per_mib_of_its_budget() {
    run(async {
        let h2 = backend(Arc::default()).await;
        let daemon = daemon(
            &format!("/={h2}"),
            &[
                ("SWITCHYARD_H2C_ENGINE", "hyper"),
                ("SWITCHYARD_H2C_HELD_PER_CLIENT", &(2 << 20).to_string()),
            ],
        );
        let (first, second, third) = (
            connect(daemon.addr).await,
            connect(daemon.addr).await,
            connect(daemon.addr).await,
        );
        assert_eq!(get(&first, "/x").await.0, StatusCode::OK);
        assert_eq!(get(&second, "/x").await.0, StatusCode::OK);
        let (status, text) = get(&third, "/x").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert!(text.contains("SWITCHYARD_H2C_HELD_PER_CLIENT"), "{text}");
        let other = connect_from_127_0_0_2(daemon.addr).await;
        assert_eq!(get(&other, "/x").await.0, StatusCode::OK);
    });
}

/// From a review: a backend that ends a request it answered whole with RST_STREAM
/// NO_ERROR (Go's does, when a handler reads no body) was given its window back while the
/// answer still waited for the client, and nothing counted it: 80 connections held 502 MiB
/// with the budget's gauge at 0. Such answers count now, and are let go like any other.
#[test]
fn whole_answers_a_backend_reset_with_no_error_count_in_the_budget() {
    run(async {
        let raw = raw_backend(Then::Reset);
        let daemon = daemon(
            &format!("/={raw}"),
            &[("SWITCHYARD_H2C_HELD_PER_CLIENT", "524288")],
        );
        let send = connect_with_window(daemon.addr, 0).await;
        let mut answers = Vec::new();
        for _ in 0..16 {
            let request = Request::post("http://t/upload").body(()).unwrap();
            let mut ready = send.clone().ready().await.unwrap();
            let (response, upload) = ready.send_request(request, false).unwrap();
            answers.push((response, upload));
        }
        // 16 answers of 60 KB wait for the client, past the 512 KiB budget.
        let began = Instant::now();
        let mut most = 0;
        while began.elapsed() < Duration::from_secs(2) && most < 512 << 10 {
            most = most.max(held_bytes(&daemon));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(most >= 512 << 10, "{most} bytes counted of 960,000 held");
        // And let go like any other, a second after the address went past its budget.
        let logs = daemon
            .wait_for_log("SWITCHYARD_H2C_HELD_PER_CLIENT")
            .unwrap_or_else(|l| l);
        assert!(logs.contains("took nothing of"), "{logs}");
        drop(answers);
    });
}

/// From a review: a backend that closed its connection gracefully (GOAWAY, then its end)
/// once it had answered cut short every answer still waiting for the client: reset with
/// INTERNAL_ERROR, 0 of 60,000 bytes taken. A whole answer reaches the client now.
#[test]
fn a_whole_answer_outlives_its_backends_graceful_close() {
    run(async {
        let raw = raw_backend(Then::Close);
        let daemon = daemon(&format!("/={raw}"), &[]);
        // 1,000 bytes of window a stream: the rest waits in the relay.
        let send = connect_with_window(daemon.addr, 1000).await;
        let request = Request::get("http://t/x").body(()).unwrap();
        let mut ready = send.clone().ready().await.unwrap();
        let (response, _) = ready.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(300)).await; // the backend is gone
        let mut body = response.into_body();
        let mut got = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("the answer, not a reset");
            let _ = body.flow_control().release_capacity(chunk.len());
            got += chunk.len();
        }
        assert_eq!(got, ANSWER);
    });
}

/// From a review: an upload its backend took nothing of after answering it whole was
/// ended at the body time-out with CANCEL, as if the answer had failed. A whole answer
/// is no error: the client is asked to stop sending with NO_ERROR (RFC 9113 §8.1).
#[test]
fn an_upload_left_after_a_whole_answer_is_stopped_with_no_error() {
    run(async {
        let raw = raw_backend(Then::Nothing);
        let daemon = daemon(
            &format!("/={raw}"),
            &[("SWITCHYARD_H2C_BODY_TIMEOUT_MS", "1000")],
        );
        let send = connect(daemon.addr).await;
        let request = Request::post("http://t/upload").body(()).unwrap();
        let mut ready = send.clone().ready().await.unwrap();
        let (response, mut upload) = ready.send_request(request, false).unwrap();
        upload
            .send_data(Bytes::from(vec![b'u'; 200_000]), false)
            .unwrap();
        let (status, body) = {
            let response = response.await.unwrap();
            let status = response.status();
            let mut body = response.into_body();
            let mut got = 0;
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                got += chunk.len();
            }
            (status, got)
        };
        assert_eq!((status, body), (StatusCode::OK, ANSWER));
        let reset = tokio::time::timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|cx| upload.poll_reset(cx)),
        );
        let reason = reset.await.expect("the upload is stopped").unwrap();
        assert_eq!(reason, Reason::NO_ERROR);
    });
}

/// From a review: while an address held its budget, a stream of its that took a byte now
/// and then counted as moving, so it was never let go, and the address stayed over its
/// budget (its other connections held back) for good. Now a stream must move a frame's
/// worth in the second it is given, while its address is over.
#[test]
fn a_stream_trickled_a_byte_at_a_time_is_let_go_while_its_address_holds_its_budget() {
    run(async {
        let h2 = backend(Arc::<Seen>::default()).await;
        let daemon = daemon(
            &format!("/={h2}"),
            &[("SWITCHYARD_H2C_HELD_PER_CLIENT", "1000000")],
        );
        let addr = daemon.addr;
        // The client's blocking loop beside the runtime, which serves the backend.
        let trickled = tokio::task::spawn_blocking(move || trickle_on_twenty_streams(addr));
        let (reset, took) = trickled.await.unwrap();
        // Past the budget (20 streams of 64 KiB, their backend granted 1 MiB; 1,000,000
        // bytes allowed), the trickled ones go.
        assert!(
            reset.len() >= 4,
            "{} of 20 reset in {took:?}: {reset:?}",
            reset.len()
        );
        assert!(reset.values().all(|&code| code == 0x8), "{reset:?}");
    });
}

/// Asks for 20 answers of 1 MiB granting no window, then a byte of window for each, every
/// 300 ms, for up to 8 s: the streams reset meanwhile (by their error codes), and when
/// the last was.
fn trickle_on_twenty_streams(addr: SocketAddr) -> (std::collections::HashMap<u32, u32>, Duration) {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    // SETTINGS_INITIAL_WINDOW_SIZE 0, then 20 streams of `GET /large` (1 MiB each).
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(raw_frame(0x4, 0, 0, &[0, 4, 0, 0, 0, 0]));
    let streams: Vec<u32> = (0..20).map(|n| 1 + 2 * n).collect();
    for &id in &streams {
        let block = [
            0x82, 0x86, 0x04, 0x06, b'/', b'l', b'a', b'r', b'g', b'e', 0x01, 0x01, b't',
        ];
        out.extend(raw_frame(0x1, 0x5, id, &block));
    }
    socket.write_all(&out).unwrap();
    let began = Instant::now();
    let mut reset = std::collections::HashMap::new();
    let (mut input, mut buf) = (Vec::new(), [0u8; 65_536]);
    let mut next_trickle = Instant::now();
    while began.elapsed() < Duration::from_secs(8) && reset.len() < streams.len() {
        if Instant::now() >= next_trickle {
            // A byte of window for each stream, every 300 ms.
            let mut trickle = Vec::new();
            for id in streams.iter().filter(|id| !reset.contains_key(*id)) {
                trickle.extend(raw_frame(0x8, 0, *id, &1u32.to_be_bytes()));
            }
            let _ = socket.write_all(&trickle);
            next_trickle += Duration::from_millis(300);
        }
        match socket.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => input.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        while input.len() >= 9 {
            let len = u32::from_be_bytes([0, input[0], input[1], input[2]]) as usize;
            if input.len() < 9 + len {
                break;
            }
            let frame: Vec<u8> = input.drain(..9 + len).collect();
            let id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]);
            if frame[3] == 0x3 {
                let code = u32::from_be_bytes([frame[9], frame[10], frame[11], frame[12]]);
                reset.insert(id, code);
            }
        }
    }
    (reset, began.elapsed())
}

/// From a review: a client that read 256 bytes every half second kept what the relay owed
/// it (256 KiB a connection) and its address over its budget for as long as it liked: bytes
/// moved, so no time-out came, and no stream was held. While its address is over, output
/// owed to a client must move a frame's worth a second, or the connection is reset.
#[test]
fn a_client_trickling_its_output_is_reset_while_its_address_holds_its_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    run(async {
        let h2 = backend(Arc::<Seen>::default()).await;
        let daemon = daemon(
            &format!("/={h2}"),
            &[("SWITCHYARD_H2C_HELD_PER_CLIENT", "200000")],
        );
        // A receive buffer of 4 KiB; SETTINGS_INITIAL_WINDOW_SIZE 16 MiB, the connection's
        // window as much; 8 streams of `GET /large` (1 MiB each).
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&daemon.addr.into()).unwrap();
        socket.set_nonblocking(true).unwrap();
        let mut socket = tokio::net::TcpStream::from_std(socket.into()).unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(raw_frame(0x4, 0, 0, &[0, 4, 1, 0, 0, 0]));
        out.extend(raw_frame(0x8, 0, 0, &(1u32 << 24).to_be_bytes()));
        for id in (0..8).map(|n| 1 + 2 * n) {
            let block = [
                0x82, 0x86, 0x04, 0x06, b'/', b'l', b'a', b'r', b'g', b'e', 0x01, 0x01, b't',
            ];
            out.extend(raw_frame(0x1, 0x5, id, &block));
        }
        socket.write_all(&out).await.unwrap();
        // 256 bytes every 250 ms, until the daemon lets the connection go or 10 s pass.
        let began = Instant::now();
        let reset = "reason=\"reset by the plugin\"";
        let mut buf = [0u8; 256];
        let mut took = 0;
        while !daemon.logs().contains(reset) && began.elapsed() < Duration::from_secs(10) {
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(10), socket.read(&mut buf)).await
            {
                took += n;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let logs = daemon.logs();
        assert!(
            logs.contains(reset),
            "open after {:?}, {took} bytes taken: {logs}",
            began.elapsed()
        );
        assert!(logs.contains("while its address holds"), "{logs}");
        // What the client had not taken is dropped: its read ends with the reset.
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest));
        let error = end.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
        assert!(took + rest.len() < 1 << 20, "{} bytes", took + rest.len());
        // What it held is let go, and the address is served again.
        assert_eq!(held_bytes(&daemon), 0);
        let again = connect(daemon.addr).await;
        assert_eq!(get(&again, "/x").await.0, StatusCode::OK);
    });
}

/// From two reviews: uploads counted in the budget but nothing held them to it, as every
/// connection was granted a 1 MiB window at once: 300 connections uploading to a backend
/// that took nothing held 299 MiB over a 64 MiB budget, and 281 MiB once they were opened
/// before uploading. A window past the protocol's 64 KiB is now granted from the budget,
/// once a peer has used half of that.
#[test]
fn uploads_are_held_to_the_budget_by_the_windows_granted() {
    run(async {
        let h2 = backend(Arc::<Seen>::default()).await;
        let daemon = daemon(
            &format!("/={h2}"),
            &[("SWITCHYARD_H2C_HELD_PER_CLIENT", "262144")],
        );
        // 8 connections, opened first; then each uploads on 8 streams to a route that
        // reads nothing: 64 KiB a stream may wait in the relay, 4 MiB in all, were the
        // windows granted regardless.
        let mut connections = Vec::new();
        for _ in 0..8 {
            connections.push(connect(daemon.addr).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut uploads = Vec::new();
        for send in &connections {
            for _ in 0..8 {
                let request = Request::post("http://t/wait-for-reset").body(()).unwrap();
                let mut ready = send.clone().ready().await.unwrap();
                let (response, mut upload) = ready.send_request(request, false).unwrap();
                upload
                    .send_data(Bytes::from(vec![b'u'; 128 << 10]), false)
                    .unwrap();
                uploads.push((response, upload));
            }
        }
        // Each connection keeps the protocol's 64 KiB: once that much has arrived (however
        // slowly a loaded machine moves it), and a rendering later, no more than that.
        held_bytes_once(&daemon, |held| held >= 256 << 10).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let held = held_bytes(&daemon);
        assert!(
            (256 << 10..1 << 20).contains(&held),
            "{held} bytes of uploads held, 256 KiB allowed"
        );
        drop(uploads);
    });
}

/// From a review: while an address held its budget, every one of its connections read its
/// backends no further, so a client behind the same NAT as one that takes nothing got no
/// answer at all until the other's were let go. A connection holding little reads on.
///
/// Whether it was served while the other's answers were held, not after they were let go
/// (a second after the address went over), is a race on a loaded machine (a flake audit
/// lost it under heavy load): a try the machine made too slow to tell proves nothing, and
/// is made again, three times at most. Without the fix every try is answered only after
/// the let-go, and the test fails.
#[test]
fn a_connection_holding_little_is_served_while_its_address_holds_its_budget() {
    let mut tries = Vec::new();
    for _ in 0..3 {
        match run(served_while_over_budget()) {
            Ok(()) => return,
            Err(late) => tries.push(late),
        }
    }
    panic!("served only after the holder's answers were let go, each try: {tries:#?}");
}

/// One try of the test above: `Err` with how long after the address went over its budget
/// the answer came, and the end of the daemon's log, if the holder's answers were let go
/// first.
async fn served_while_over_budget() -> Result<(), (Duration, String)> {
    let h2 = backend(Arc::<Seen>::default()).await;
    let daemon = daemon(
        &format!("/={h2}"),
        &[("SWITCHYARD_H2C_HELD_PER_CLIENT", "1000000")],
    );
    let holder = connect_with_window(daemon.addr, 0).await;
    let held = ask_large(&holder, 20).await;
    // Long enough for the holder to go over on a loaded machine (a flake audit: 150 ms
    // was not, 4 times in 6 with six busy processes), well within the second after
    // which its answers are let go. (The metrics' first rendering: later ones may be a
    // second old, so it is not polled.)
    tokio::time::sleep(Duration::from_millis(400)).await;
    let held_now = held_bytes(&daemon);
    assert!(held_now > 1_000_000, "not over its budget: {held_now}");
    let over = Instant::now();
    let wide = client::Builder::new()
        .initial_window_size(4 << 20)
        .initial_connection_window_size(4 << 20)
        .clone();
    let honest = crate::h2c_proxy::connect_by(daemon.addr, &wide).await;
    // A small answer: a 1 MiB one took 724 ms on CI's loaded machine, past the second
    // after which the holder's answers are let go, and proved nothing then.
    let (status, body) = get(&honest, "/honest").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "/honest"));
    // Served before the other's answers were let go, not thanks to it.
    let logs = daemon.logs();
    drop(held);
    match logs.contains("took nothing of") {
        false => Ok(()),
        true => {
            let tail = logs.len().saturating_sub(2_000);
            let tail = (tail..logs.len())
                .find(|&at| logs.is_char_boundary(at))
                .unwrap_or(0);
            Err((over.elapsed(), logs[tail..].to_string()))
        }
    }
}
