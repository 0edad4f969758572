//! Opening connections: plain, switched with `Upgrade: TOKEN`, or WebSocket handshakes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

pub fn websocket_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n"
    )
}

/// Reads a response head and checks it is a 101; returns bytes read past it.
pub fn expect_switch(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the handshake",
            ));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if !head.starts_with(b"HTTP/1.1 101") {
                let line = String::from_utf8_lossy(
                    &head[..head.iter().position(|&b| b == b'\r').unwrap_or(0)],
                )
                .into_owned();
                return Err(io::Error::other(format!("no switch: {line}")));
            }
            return Ok(head.split_off(end + 4));
        }
    }
}

/// Connects and, when `upgrade` is given, switches with `Upgrade: TOKEN` (`websocket` does
/// the WebSocket handshake).
pub fn open(addr: SocketAddr, upgrade: Option<&str>, path: &str) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let request = match upgrade {
        None => return Ok(stream),
        Some("websocket") => websocket_request(path),
        Some(token) => format!(
            "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: upgrade\r\nUpgrade: {token}\r\n\r\n"
        ),
    };
    stream.write_all(request.as_bytes())?;
    let extra = expect_switch(&mut stream)?;
    if !extra.is_empty() {
        return Err(io::Error::other("unexpected bytes after the 101"));
    }
    Ok(stream)
}

/// A masked client frame (RFC 6455 §5.2) carrying `payload`.
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Size of the unmasked server frame echoing a `len`-byte payload.
pub fn server_frame_len(len: usize) -> usize {
    len + match len {
        n if n < 126 => 2,
        n if n <= 65535 => 4,
        _ => 10,
    }
}
