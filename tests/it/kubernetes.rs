//! The stop as Kubernetes runs it (issue 25): SIGTERM comes as the pod leaves the
//! Service's endpoints, which takes the cluster a few seconds to hear. `/readyz` turns
//! `503` at once while `/healthz` stays `200`; new connections are still served for
//! `SWITCHYARD_STOP_DELAY_MS`; then WebSockets are told 1001 and HTTP/2 connections GOAWAY,
//! the listener closes, and the daemon exits 0 as soon as they are done, inside the grace
//! period, long before Kubernetes' SIGKILL.

use crate::h2c::{frame, read_until, PREFACE};
use crate::support::Daemon;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

fn status_of(daemon: &Daemon, path: &str) -> u16 {
    let mut client = daemon.client();
    client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
    client.response().status
}

fn websocket(daemon: &Daemon) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect(daemon.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut ws, _) =
        tungstenite::client(format!("ws://{}/chat", daemon.addr), stream).expect("handshake");
    ws.send(Message::text("hello")).unwrap();
    assert_eq!(ws.read().unwrap().into_text().unwrap().as_str(), "hello");
    ws
}

/// Reads until the server's close frame; its code, and when it came.
fn close_of(ws: &mut tungstenite::WebSocket<TcpStream>) -> (CloseCode, Instant) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return (frame.code, Instant::now()),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

#[test]
fn issue25_the_stop_as_kubernetes_runs_it() {
    let delay = Duration::from_millis(1500);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut daemon = Daemon::builder()
        .plugin("switchyard-websocket")
        .plugin("switchyard-h2c")
        .env("SWITCHYARD_STOP_DELAY_MS", &delay.as_millis().to_string())
        .env("SWITCHYARD_SHUTDOWN_GRACE_MS", "30000")
        .env("SWITCHYARD_H2C_ROUTES", &format!("/={closed}"))
        .start();
    assert_eq!(status_of(&daemon, "/readyz"), 200, "ready while serving");
    let mut held = websocket(&daemon);
    let mut h2 = daemon.client();
    h2.send(PREFACE);
    h2.send(frame(0x4, 0, 0, &[]));
    read_until(&mut h2, 0x4, 0); // the daemon's SETTINGS: the connection is the plugin's

    let signalled = Instant::now();
    daemon.signal(libc::SIGTERM);
    daemon
        .wait_for_log("/readyz answers 503")
        .unwrap_or_else(|l| panic!("{l}"));
    assert_eq!(
        status_of(&daemon, "/readyz"),
        503,
        "not ready from the signal on"
    );
    assert_eq!(status_of(&daemon, "/healthz"), 200, "alive all the while");
    // Connections that still come (the endpoint is not yet gone everywhere) are served.
    let mut late = websocket(&daemon);
    assert!(
        signalled.elapsed() < delay,
        "the late connection came during the delay"
    );

    let (code, at) = close_of(&mut held);
    assert_eq!(code, CloseCode::Away, "1001 going away");
    let told = at.duration_since(signalled);
    assert!(
        told >= delay - Duration::from_millis(100),
        "told after the delay, not before: {told:?}"
    );
    assert_eq!(close_of(&mut late).0, CloseCode::Away);
    let (_, goaway) = read_until(&mut h2, 0x7, 0);
    assert_eq!(&goaway[4..8], &[0, 0, 0, 0], "GOAWAY NO_ERROR");
    drop((held, late, h2));

    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("exited once its connections were done");
    assert_eq!(status.code(), Some(0));
    let took = signalled.elapsed();
    assert!(
        took < delay + Duration::from_secs(5),
        "exited {took:?} after SIGTERM: inside the grace period, long before a SIGKILL"
    );
}
