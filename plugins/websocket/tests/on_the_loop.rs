//! The WebSocket plugin's connection without the daemon: negotiated and then run by
//! protocol-api's readiness harness, which calls `start` and `on_ready` by the daemon's
//! rules, on a real loopback socket. Frames are written here byte by byte from RFC 6455
//! §5.2, not with the plugin's own encoder.

use protocol_api::testing::{serve_ready, TestRequest};
use protocol_api::{Decision, EventProtocol};
use std::io::{Read, Write};
use std::net::TcpStream;
use switchyard_websocket::WebSocket;

/// RFC 6455 §1.3's sample key.
fn handshake() -> TestRequest {
    TestRequest::get("/chat")
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Sec-WebSocket-Version", "13")
}

/// A client frame (§5.2): FIN as given, masked with a fixed key.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "short frames only here");
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![(u8::from(fin) << 7) | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// Reads one server frame (unmasked, short): its first byte and payload.
fn server_frame(client: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    client.read_exact(&mut head).expect("a frame header");
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked (§5.1)");
    let len = usize::from(head[1] & 0x7f);
    assert!(len < 126);
    let mut payload = vec![0; len];
    client.read_exact(&mut payload).expect("the payload");
    (head[0], payload)
}

fn accepted(request: &TestRequest) -> (WebSocket, <WebSocket as EventProtocol>::Session) {
    let plugin = WebSocket::new().expect("default settings");
    match request.with(|request| plugin.negotiate(request)) {
        Decision::Accept { session, headers } => {
            let accept = headers
                .iter()
                .find(|(name, _)| name == "Sec-WebSocket-Accept")
                .map(|(_, value)| value.as_str());
            // §1.3: the sample key's answer.
            assert_eq!(accept, Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
            (plugin, session)
        }
        Decision::Reject(rejection) => panic!("refused: {rejection:?}"),
        _ => panic!("not accepted"),
    }
}

#[test]
fn rfc6455_5_6_a_text_message_comes_back_as_one_frame() {
    let request = handshake();
    let (plugin, session) = accepted(&request);
    let (mut client, served) = serve_ready(plugin, session, request);
    client
        .write_all(&client_frame(true, 0x1, b"hello"))
        .unwrap();
    assert_eq!(server_frame(&mut client), (0x81, b"hello".to_vec()));
    // §5.5.1: a close is answered with a close, then the server ends the connection.
    client
        .write_all(&client_frame(true, 0x8, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(
        server_frame(&mut client),
        (0x88, 1000u16.to_be_bytes().to_vec())
    );
    served.join().unwrap().expect("the plugin ended cleanly");
    assert_eq!(client.read(&mut [0u8; 1]).unwrap(), 0, "then the end");
}

#[test]
fn rfc6455_5_4_fragments_sent_a_byte_at_a_time_with_a_ping_between_them() {
    let request = handshake();
    let (plugin, session) = accepted(&request);
    let (mut client, served) = serve_ready(plugin, session, request);
    let mut bytes = client_frame(false, 0x1, b"frag");
    bytes.extend(client_frame(true, 0x9, b"are you there")); // §5.5.2 control in between
    bytes.extend(client_frame(true, 0x0, b"mented"));
    for byte in bytes {
        client.write_all(&[byte]).unwrap();
        client.flush().unwrap();
    }
    // §5.5.3: the pong carries the ping's payload and may come before the message ends.
    assert_eq!(server_frame(&mut client), (0x8a, b"are you there".to_vec()));
    assert_eq!(server_frame(&mut client), (0x81, b"fragmented".to_vec()));
    drop(client);
    let _ = served.join().unwrap();
}

#[test]
fn rfc6455_5_1_an_unmasked_client_frame_is_closed_with_1002() {
    let request = handshake();
    let (plugin, session) = accepted(&request);
    let (mut client, served) = serve_ready(plugin, session, request);
    client.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    let (first, payload) = server_frame(&mut client);
    assert_eq!(first, 0x88);
    assert_eq!(payload[..2], 1002u16.to_be_bytes());
    drop(client);
    let _ = served.join().unwrap();
}
