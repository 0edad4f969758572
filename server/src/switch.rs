//! The worker's side of a switch: ask the client's protocols' plugins in order, send the
//! `101` (or the refusal, or the plain answer when every plugin declines), run the plugin's
//! `serve`, close.

use crate::access::{self, Exchange};
use crate::http::head::Head;
use crate::http::response::{is_field_value, is_token, write_header, write_status_line, Response};
use crate::metrics::Metrics;
use crate::plugin::{HostConnection, Negotiation, Plugin, RequestHeaders, RequestParts, Served};
use crate::route::{plain_answer, Offer};
use crate::shared::{Returned, Shared};
use crate::workers::Slot;
use std::borrow::Cow;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// An upgrade request, read whole by the event loop, on its way to a worker.
pub struct Job {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub head: Head,
    /// The head's bytes; `head`'s spans point into them.
    pub head_bytes: Vec<u8>,
    pub body: Vec<u8>,
    /// Bytes the client sent after the request: the new protocol's, served first.
    pub read_ahead: Vec<u8>,
    /// Answers to earlier pipelined requests not yet written: they go out first.
    pub pending_output: Vec<u8>,
    pub offers: Vec<Offer>,
    pub started: Instant,
    pub bytes_in: u64,
    pub slot: Slot,
}

/// How long a worker drains a client after a refusal before closing (a lingering close).
const LINGER: Duration = Duration::from_secs(1);

pub fn run(job: Job, shared: &Shared) {
    let Job {
        stream,
        peer,
        head,
        head_bytes,
        body,
        read_ahead,
        pending_output,
        offers,
        started,
        bytes_in,
        slot,
    } = job;
    let _slot = slot;
    let bytes = head_bytes.as_slice();
    let head_only = head.method(bytes) == "HEAD";
    let request_line =
        access::request_line(head.method(bytes), head.target(bytes), head.version_minor);
    let mut exchange = Exchange {
        peer,
        request: &request_line,
        status: 0,
        protocol: None,
        bytes_in,
        bytes_out: 0,
        started,
        reason: None,
    };

    // Answers to earlier pipelined requests go first. A client that does not read them
    // cannot hold this worker longer than it may take to send a request.
    let timeout = Some(shared.config.header_timeout);
    let ready = stream
        .set_nonblocking(false)
        .and_then(|()| match pending_output.is_empty() {
            true => Ok(()),
            false => stream
                .set_write_timeout(timeout)
                .and_then(|()| (&stream).write_all(&pending_output))
                .and_then(|()| stream.set_write_timeout(None)),
        });
    if let Err(e) = ready {
        log::debug!("{peer}: connection lost before the switch: {e}");
        return;
    }
    let peer_text = peer.to_string();
    let mut request = RequestParts {
        method: head.method.get(bytes),
        target: head.target.get(bytes),
        version_minor: u32::from(head.version_minor),
        headers: RequestHeaders::new(
            head.headers
                .iter()
                .map(|(n, v)| (n.get(bytes), v.get(bytes))),
        ),
        peer: &peer_text,
        body: &body,
        protocol: &[],
    };

    for offer in &offers {
        if shared.is_stopping() {
            break;
        }
        let plugin = &shared.registry.plugins[offer.plugin];
        request.protocol = offer.product.get(bytes);
        match plugin.negotiate(&request) {
            Negotiation::Decline => continue,
            Negotiation::Accept { session, headers } => {
                let Some(switching) = switching_protocols(offer.product.str(bytes), &headers)
                else {
                    log::error!(
                        "plugin {}: negotiate gave a header that is not valid HTTP: {headers:?}",
                        plugin.name
                    );
                    exchange.reason = Some("plugin sent an invalid header");
                    return refuse(
                        stream,
                        Response::error(500, "internal error"),
                        head_only,
                        &mut exchange,
                        &shared.metrics,
                    );
                };
                if let Err(e) = (&stream).write_all(&switching) {
                    log::debug!("{peer}: connection lost sending 101: {e}");
                    return; // dropping `session` hands it back to the plugin
                }
                exchange.status = 101;
                exchange.protocol = Some(offer.product.str(bytes));
                exchange.bytes_out = switching.len() as u64;
                drop((switching, headers)); // nothing of the handshake outlives it
                let protocol = request.protocol;
                let request = RequestParts {
                    protocol,
                    ..request
                };
                shared.metrics.response(101);
                return serve(
                    offer.plugin,
                    session,
                    &request,
                    stream,
                    read_ahead,
                    shared,
                    &mut exchange,
                );
            }
            Negotiation::Reject {
                status,
                headers,
                body,
            } => {
                let response = rejection(plugin, status, headers, body);
                exchange.reason = Some("refused by plugin");
                return refuse(stream, response, head_only, &mut exchange, &shared.metrics);
            }
            Negotiation::Panicked(message) => {
                shared.metrics.panicked(offer.plugin);
                log::error!(
                    "plugin {} panicked in negotiate: {message}; connection closed",
                    plugin.name
                );
                exchange.reason = Some("plugin panicked");
                return refuse(
                    stream,
                    Response::error(500, "internal error"),
                    head_only,
                    &mut exchange,
                    &shared.metrics,
                );
            }
        }
    }
    if shared.is_stopping() {
        exchange.reason = Some("stopping");
        let answer = Response::error(503, "the server is stopping").header("Retry-After", "1");
        return refuse(stream, answer, head_only, &mut exchange, &shared.metrics);
    }
    // Every plugin declined: answer as if there had been no Upgrade (RFC 9110 §7.8), an
    // ordinary exchange that keeps the connection unless the client asked otherwise.
    let answer = plain_answer(&head, bytes, &shared.registry.tokens);
    if answer.close {
        return refuse(stream, answer, head_only, &mut exchange, &shared.metrics);
    }
    if send(&stream, &answer, head_only, &mut exchange, &shared.metrics)
        && stream.set_write_timeout(None).is_ok()
    {
        shared.hand_back(Returned {
            stream,
            peer,
            input: read_ahead,
        });
    }
}

fn serve(
    index: usize,
    session: crate::plugin::Session<'_>,
    request: &RequestParts<'_>,
    stream: TcpStream,
    read_ahead: Vec<u8>,
    shared: &Shared,
    exchange: &mut Exchange<'_>,
) {
    let plugin: &Plugin = &shared.registry.plugins[index];
    shared.metrics.switched(index);
    let stream = Arc::new(stream);
    let live_key = shared.live.add(stream.clone());
    let mut connection = HostConnection {
        stream: &stream,
        read_ahead,
        read_ahead_pos: 0,
        bytes_in: 0,
        bytes_out: 0,
        stopping: &shared.stopping,
    };
    let served = plugin.serve(session, request, &mut connection);
    shared.live.remove(live_key);
    exchange.bytes_in += connection.bytes_in;
    exchange.bytes_out += connection.bytes_out;
    match served {
        Served::Done => {}
        Served::Failed(message) => {
            log::debug!(
                "plugin {}: serve for {} ended with an error: {message}",
                plugin.name,
                exchange.peer
            );
        }
        Served::Panicked(message) => {
            shared.metrics.panicked(index);
            log::error!(
                "plugin {} panicked in serve: {message}; connection from {} closed",
                plugin.name,
                exchange.peer
            );
            exchange.reason = Some("plugin panicked");
        }
    }
    access::log(exchange);
    // Closing `stream` here ends the connection whatever the plugin left behind.
}

/// The `101` (RFC 9110 §15.2.2): `Upgrade` names the protocol as the client spelled it,
/// `Connection: upgrade`, then the plugin's headers; `None` if those are not valid HTTP.
fn switching_protocols(product: &str, headers: &[(String, String)]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    write_status_line(&mut out, 101);
    write_header(&mut out, "Upgrade", product);
    write_header(&mut out, "Connection", "upgrade");
    for (name, value) in headers {
        if !is_token(name) || !is_field_value(value) {
            return None;
        }
        write_header(&mut out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    Some(out)
}

fn rejection(
    plugin: &Plugin,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> Response {
    let valid = (300..=599).contains(&status)
        && headers
            .iter()
            .all(|(n, v)| is_token(n) && is_field_value(v));
    if !valid {
        log::error!(
            "plugin {}: rejection with status {status} or headers {headers:?} is not valid HTTP",
            plugin.name
        );
        return Response::error(500, "internal error");
    }
    let mut response = Response::new(status, body).closing();
    response.headers = headers
        .into_iter()
        .map(|(n, v)| (Cow::Owned(n), Cow::Owned(v)))
        .collect();
    response
}

/// Writes a response that does not switch and logs the exchange; true when it all went out.
fn send(
    stream: &TcpStream,
    response: &Response,
    head_only: bool,
    exchange: &mut Exchange<'_>,
    metrics: &Metrics,
) -> bool {
    let mut out = Vec::new();
    response.write_to(
        &mut out,
        &httpdate::fmt_http_date(SystemTime::now()),
        head_only,
    );
    exchange.status = response.status;
    exchange.bytes_out += out.len() as u64;
    access::log(exchange);
    metrics.response(response.status);
    stream
        .set_write_timeout(Some(LINGER))
        .and_then(|()| (&*stream).write_all(&out))
        .is_ok()
}

/// Sends a response that does not switch, then closes gracefully.
fn refuse(
    stream: TcpStream,
    response: Response,
    head_only: bool,
    exchange: &mut Exchange<'_>,
    metrics: &Metrics,
) {
    if send(&stream, &response, head_only, exchange, metrics) {
        linger(&stream);
    }
}

/// Shut our side, then read what the client still sends for a moment, so it reads our
/// response instead of a reset (RFC 9112 §9.6).
fn linger(stream: &TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    while let Some(left) = until
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        if stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match (&mut &*stream).read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9110_15_2_2_switching_protocols_names_the_protocol() {
        let out = switching_protocols("Echo/1", &[("X-Session".into(), "7".into())]).unwrap();
        assert!(out.starts_with(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: Echo/1\r\nConnection: upgrade\r\n"
        ));
        assert!(out.ends_with(b"X-Session: 7\r\n\r\n"));
        assert!(
            switching_protocols("echo", &[("X".into(), "a\r\nSet-Cookie: x".into())]).is_none()
        );
    }
}
