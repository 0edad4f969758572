//! One WebSocket connection after the `101`: read, feed the [`Receiver`], echo, close.
//!
//! Replies produced by one read (echoes, pongs, a close) are gathered and written with one
//! `write`, so a client with several messages in flight gets its echoes coalesced. With
//! permessage-deflate agreed, echoes are compressed too.

use crate::config::Config;
use crate::deflate::{Agreement, Deflater, Inflater};
use crate::frame::{encode_header, opcode, write_frame, MAX_HEADER, RSV1_COMPRESSED};
use crate::receiver::{close_code, Event, Receiver};
use protocol_api::Connection;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

/// The read buffer of a quiet connection: small, because an idle connection should cost
/// little memory. It grows to fit a frame whose header says it is larger, doubles while
/// reads fill it (up to [`MAX_READ_BUFFER`]), and shrinks back after [`SHRINK_AFTER`]
/// without traffic.
const INITIAL_READ_BUFFER: usize = 256;
/// How long a grown read buffer is kept through silence.
const SHRINK_AFTER: Duration = Duration::from_secs(1);
const MAX_READ_BUFFER: usize = 256 * 1024;
/// An output buffer grown past this by a large message is given back after the write.
const KEEP_OUTPUT: usize = 256 * 1024;
/// Messages from this size on are written straight from where they lie, header and payload
/// in one vectored write; smaller ones are copied and coalesced with the other replies.
const VECTORED_FROM: usize = 8 * 1024;
/// After we close: how long the peer gets to answer before the socket is closed.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub fn serve(
    conn: &mut Connection<'_>,
    config: &Config,
    deflate: Option<Agreement>,
) -> io::Result<()> {
    let mut receiver = Receiver::new(config.max_message, deflate.map(Inflater::new));
    let mut deflater = deflate.map(Deflater::new);
    let mut packed = Vec::new();
    let mut buffer = vec![0u8; INITIAL_READ_BUFFER];
    let mut filled = 0;
    let mut out = Vec::new();
    let mut ping_sent = false;
    // True while the read time-out is SHRINK_AFTER, set because the buffer grew.
    let mut shrink_armed = false;
    if config.idle.is_some() {
        conn.set_read_timeout(config.idle)?;
    }
    loop {
        let n = match conn.read(&mut buffer[filled..]) {
            Ok(0) if conn.is_stopping() => {
                return close(conn, close_code::GOING_AWAY, "server stopping")
            }
            Ok(0) => return Ok(()), // the peer left without a closing handshake
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if shrink_armed {
                    // Quiet for a while: give the grown buffer back, wait as before.
                    buffer.truncate(filled.max(INITIAL_READ_BUFFER));
                    buffer.shrink_to_fit();
                    shrink_armed = false;
                    conn.set_read_timeout(config.idle)?;
                    continue;
                }
                if conn.is_stopping() || ping_sent {
                    return close(conn, close_code::GOING_AWAY, "idle");
                }
                ping_sent = true;
                out.clear();
                write_frame(&mut out, opcode::PING, b"");
                conn.write_all(&out)?;
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        ping_sent = false;
        let total = filled + n;
        let mut write_error = None;
        let result = receiver.feed(&mut buffer[..total], &mut |event| match event {
            Event::Message { text, payload } => {
                let mut opcode = if text { opcode::TEXT } else { opcode::BINARY };
                let payload = match deflater.as_mut() {
                    Some(deflater) => {
                        deflater.deflate(payload, &mut packed);
                        opcode |= RSV1_COMPRESSED;
                        &packed[..]
                    }
                    None => payload,
                };
                if payload.len() < VECTORED_FROM {
                    write_frame(&mut out, opcode, payload);
                } else if write_error.is_none() {
                    write_error = send_large(conn, &mut out, opcode, payload).err();
                }
            }
            Event::Ping(payload) => write_frame(&mut out, opcode::PONG, payload),
            Event::Pong(_) => {}
            // §5.5.1: answer with a close frame echoing the code.
            Event::Close { code, .. } => write_frame(
                &mut out,
                opcode::CLOSE,
                &code.map_or(Vec::new(), |c| c.to_be_bytes().to_vec()),
            ),
        });
        if let Some(e) = write_error {
            return Err(e);
        }
        let used = match result {
            Ok(used) => used,
            Err(violation) => {
                log::debug!("closing with {}: {}", violation.code, violation.reason);
                conn.write_all(&out)?; // what was due before the violation
                return close(conn, violation.code, violation.reason);
            }
        };
        if !out.is_empty() {
            conn.write_all(&out)?;
            out.clear();
            if out.capacity() > KEEP_OUTPUT {
                out = Vec::new();
            }
        }
        if receiver.is_closed() {
            // The handshake is complete: the server closes the TCP connection first (§7.1.1).
            return Ok(());
        }
        buffer.copy_within(used..total, 0);
        filled = total - used;
        // Room for the rest of a frame the header announced, or more when reads fill it.
        let announced = usize::try_from(receiver.payload_pending()).unwrap_or(usize::MAX);
        let wanted = if total == buffer.len() {
            buffer.len() * 2
        } else {
            0
        }
        .max(filled + announced.saturating_add(MAX_HEADER))
        .min(MAX_READ_BUFFER);
        if wanted > buffer.len() {
            buffer.resize(wanted, 0);
            if !shrink_armed {
                shrink_armed = true;
                let wait = config
                    .idle
                    .map_or(SHRINK_AFTER, |idle| idle.min(SHRINK_AFTER));
                conn.set_read_timeout(Some(wait))?;
            }
        }
    }
}

/// Writes what `out` holds, then one frame whose payload is not copied.
fn send_large(
    conn: &mut Connection<'_>,
    out: &mut Vec<u8>,
    opcode: u8,
    payload: &[u8],
) -> io::Result<()> {
    let mut header = [0u8; MAX_HEADER];
    let header_len = encode_header(true, opcode, payload.len(), &mut header);
    let mut slices = [
        IoSlice::new(out),
        IoSlice::new(&header[..header_len]),
        IoSlice::new(payload),
    ];
    let mut slices = &mut slices[..];
    IoSlice::advance_slices(&mut slices, 0); // drops an empty `out`
    while !slices.is_empty() {
        match conn.write_vectored(slices) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.clear();
    Ok(())
}

/// Starts the closing handshake (§7.1.2): our close frame, the end of our sending, then a
/// short wait for the peer's answer and its end of the connection.
fn close(conn: &mut Connection<'_>, code: u16, reason: &str) -> io::Result<()> {
    let mut frame = Vec::with_capacity(4 + reason.len());
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    write_frame(&mut frame, opcode::CLOSE, &payload);
    conn.write_all(&frame)?;
    conn.shutdown(Shutdown::Write)?;
    conn.set_read_timeout(Some(CLOSE_WAIT))?;
    let mut sink = [0u8; 512];
    while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}
