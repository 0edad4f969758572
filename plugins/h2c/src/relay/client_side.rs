//! The relay's client side: the client's bytes read and cut into frames, each frame acted
//! on (SETTINGS, PING, GOAWAY, windows, resets), and each request's field block decoded,
//! checked, routed and placed, its body passed on as the windows allow.

use super::message::Refused;
use super::stream::{AccessRecord, Flow, Stream, Target};
use super::{
    code_name, message, with_fields, ReadEnd, Relay, GOAWAY_PING, OVERSIZE_GLITCHES, SCRATCH,
};
use crate::frame::{self, code, flag, kind, Head, Malformed};
use crate::hpack::Fields;
use protocol_api::Io;
use std::io::{self, ErrorKind, Read};
use std::time::{Duration, Instant};

impl Relay {
    /// Reads the client until it is drained, the call's budget is spent, or what it sends
    /// would have to wait (output owed past [`super::OUT_LIMIT`]). A read shorter than asked
    /// drains it unless its end was reported (`peer_closed`; the loop reports a FIN, and an
    /// edge-triggered event comes for anything that arrives later); then it is read to the
    /// end.
    pub(super) fn read_client(
        &mut self,
        io: &mut Io<'_>,
        may_read: bool,
        peer_closed: bool,
    ) -> io::Result<ReadEnd> {
        let mut may_read = may_read;
        SCRATCH.with_borrow_mut(|buf| {
            let mut total = 0;
            loop {
                if self.failed || self.holds_client() {
                    return Ok(ReadEnd::Held);
                }
                if total >= protocol_api::sizes::READ_BUDGET {
                    return Ok(ReadEnd::Spent);
                }
                if has_frame(&self.client.tail) {
                    // Frames held back earlier go first (and the buffer keeps room).
                    let tail = std::mem::take(&mut self.client.tail);
                    total += tail.len();
                    self.client_bytes(&tail);
                    continue;
                }
                if !may_read {
                    return Ok(ReadEnd::Blocked);
                }
                let kept = self.client.tail.len();
                let asked = buf.len() - kept;
                // Bytes the daemon read ahead come first, and say nothing of the socket.
                let from_read_ahead = io.buffered() > 0;
                let n = match io.read(&mut buf[kept..]) {
                    Ok(0) => return Ok(ReadEnd::Closed),
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(ReadEnd::Blocked),
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(ReadEnd::Closed),
                    Err(e) => return Err(e),
                };
                buf[..kept].copy_from_slice(&self.client.tail);
                self.client.tail.clear();
                total += n;
                may_read = n == asked || peer_closed || from_read_ahead;
                self.client_bytes(&buf[..kept + n]);
            }
        })
    }

    /// Takes the client's frames from `bytes`; an incomplete last one is kept.
    pub(super) fn client_bytes(&mut self, bytes: &[u8]) {
        let mut at = 0;
        if self.expect_preface {
            let preface = crate::upgrade::PREFACE;
            if bytes.len() < preface.len() {
                if !preface.starts_with(bytes) {
                    return self.fail(code::PROTOCOL_ERROR, "no client preface");
                }
                self.client.tail = bytes.to_vec();
                return;
            }
            if &bytes[..preface.len()] != preface {
                return self.fail(code::PROTOCOL_ERROR, "no client preface");
            }
            self.expect_preface = false;
            at = preface.len();
        }
        while let Some(head) = Head::parse(&bytes[at..]) {
            if head.len > frame::DEFAULT_MAX_FRAME {
                return self.fail(code::FRAME_SIZE_ERROR, "a frame over 16 KiB");
            }
            if self.holds_client() {
                // What this frame would add has to wait (a frame of 25 bytes can make
                // 16 KiB for a backend): it stays with the rest, for the next call.
                break;
            }
            let end = at + frame::HEAD_LEN + head.len as usize;
            if end > bytes.len() {
                break;
            }
            if let Err(Malformed(error)) =
                self.on_client_frame(head, &bytes[at + frame::HEAD_LEN..end])
            {
                return self.fail(error, "a frame against the protocol");
            }
            if self.failed {
                return;
            }
            at = end;
        }
        self.client.tail.extend_from_slice(&bytes[at..]);
    }

    pub(super) fn on_client_frame(&mut self, head: Head, payload: &[u8]) -> Result<(), Malformed> {
        if !self.client.settled && head.kind != kind::SETTINGS {
            // The preface's first frame is SETTINGS (RFC 9113 §3.4).
            return Err(Malformed(code::PROTOCOL_ERROR));
        }
        if self.client.expects_continuation() {
            if head.kind != kind::CONTINUATION {
                return Err(Malformed(code::PROTOCOL_ERROR));
            }
            if payload.is_empty() && !head.has(flag::END_HEADERS) {
                // Adds nothing and ends nothing: a field block held open for ever costs
                // a frame's work each (an attacker's review).
                self.glitch();
            }
            if let Some(block) = self.client.field_block(&head, payload)? {
                self.on_request_block(block.stream, block.end_stream, &block.bytes)?;
            }
            return Ok(());
        }
        match head.kind {
            kind::DATA => self.on_client_data(head, payload),
            kind::HEADERS => {
                if head.stream.is_multiple_of(2) {
                    return Err(Malformed(code::PROTOCOL_ERROR));
                }
                if head.has(flag::END_HEADERS) {
                    let fragment = frame::header_fragment(&head, payload)?;
                    return self.on_request_block(
                        head.stream,
                        head.has(flag::END_STREAM),
                        fragment,
                    );
                }
                self.client.field_block(&head, payload)?;
                Ok(())
            }
            kind::CONTINUATION | kind::PUSH_PROMISE => Err(Malformed(code::PROTOCOL_ERROR)),
            kind::PRIORITY => {
                if head.stream == 0 {
                    return Err(Malformed(code::PROTOCOL_ERROR));
                }
                self.glitch();
                if payload.len() != 5 {
                    // A stream error (RFC 9113 §6.3); a stream not yet opened cannot be
                    // reset (§6.4), so there it is the connection's.
                    if head.stream > self.last_stream {
                        return Err(Malformed(code::FRAME_SIZE_ERROR));
                    }
                    self.reset_client(head.stream, code::FRAME_SIZE_ERROR);
                    if let Some(stream) = self.take_stream(head.stream) {
                        self.drop_stream(head.stream, stream, code::CANCEL);
                    }
                }
                Ok(())
            }
            kind::RST_STREAM => {
                let error = frame::word(payload, false)?;
                if head.stream == 0 || head.stream > self.last_stream {
                    return Err(Malformed(code::PROTOCOL_ERROR));
                }
                if !self.reset_sent.forget(head.stream) {
                    // (Both ends resetting a stream at once is no glitch, once.)
                    self.glitch();
                }
                if let Some(access) = self
                    .streams
                    .get_mut(&head.stream)
                    .and_then(|s| s.access.as_deref_mut())
                {
                    access.reason = Some(format!("reset by the client ({})", code_name(error)));
                }
                if let Some(stream) = self.take_stream(head.stream) {
                    log::debug!(
                        "h2c {}: stream {} reset by the client ({error:#x})",
                        self.peer_addr,
                        head.stream
                    );
                    let at_backend = stream.is_open_on_backend();
                    self.drop_stream(head.stream, stream, code::CANCEL);
                    let client = protocol_api::clients::key(self.peer_addr.ip());
                    if at_backend && !self.shared.resets.allow(client) && !self.failed {
                        self.fail(
                            code::ENHANCE_YOUR_CALM,
                            "too many streams at a backend reset by this client address",
                        );
                    }
                }
                Ok(())
            }
            kind::SETTINGS => {
                if head.stream != 0 {
                    return Err(Malformed(code::PROTOCOL_ERROR));
                }
                if head.has(flag::ACK) {
                    return match payload.is_empty() {
                        true => Ok(()),
                        false => Err(Malformed(code::FRAME_SIZE_ERROR)),
                    };
                }
                let implicit = std::mem::take(&mut self.implicit_settings);
                if !implicit {
                    self.glitch();
                }
                let changed = self.client.settings(payload, implicit)?;
                if changed.window_delta != 0 {
                    for stream in self.streams.values_mut() {
                        stream.down.send_window += changed.window_delta;
                        if stream.down.send_window > frame::MAX_WINDOW {
                            return Err(Malformed(code::FLOW_CONTROL_ERROR));
                        }
                    }
                    self.drain_down_all();
                }
                Ok(())
            }
            kind::PING => {
                if head.stream != 0 {
                    return Err(Malformed(code::PROTOCOL_ERROR));
                }
                if payload.len() != 8 {
                    return Err(Malformed(code::FRAME_SIZE_ERROR));
                }
                if !head.has(flag::ACK) {
                    self.glitch();
                    frame::write(self.client.out.queue(), kind::PING, flag::ACK, 0, payload);
                } else if payload == GOAWAY_PING {
                    self.last_goaway();
                }
                Ok(())
            }
            kind::GOAWAY => {
                if head.stream != 0 {
                    return Err(Malformed(code::PROTOCOL_ERROR));
                }
                if payload.len() < 8 {
                    return Err(Malformed(code::FRAME_SIZE_ERROR));
                }
                self.client_going_away = true;
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                let increment = frame::word(payload, true)?;
                if head.stream == 0 {
                    // Streams wait on the connection's window only while it is shut: a
                    // drain stops at its end, or moves everything the streams' own windows
                    // let go. So a window open already unblocks nothing, and is not looked
                    // for (the attacker's review of run 21: WINDOW_UPDATEs of 1 with 100
                    // streams held shut cost a look at each, 168 ns a 13-byte frame).
                    let was_shut = self.client.send_window <= 0;
                    self.client.window_update(increment)?;
                    if was_shut {
                        self.drain_down_all();
                    }
                    return Ok(());
                }
                let Some(stream) = self.streams.get_mut(&head.stream) else {
                    if head.stream > self.last_stream {
                        return Err(Malformed(code::PROTOCOL_ERROR));
                    }
                    return Ok(());
                };
                stream.down.send_window += i64::from(increment);
                if increment == 0 || stream.down.send_window > frame::MAX_WINDOW {
                    let error = if increment == 0 {
                        code::PROTOCOL_ERROR
                    } else {
                        code::FLOW_CONTROL_ERROR
                    };
                    self.refuse(head.stream, error);
                    return Ok(());
                }
                self.drain_down(head.stream);
                Ok(())
            }
            // Unknown types are ignored (RFC 9113 §5.5).
            _ => Ok(()),
        }
    }

    /// A request's (or its trailers') field block.
    pub(super) fn on_request_block(
        &mut self,
        id: u32,
        end_stream: bool,
        block: &[u8],
    ) -> Result<(), Malformed> {
        with_fields(|fields| self.request_fields(id, end_stream, block, fields))
    }

    pub(super) fn request_fields(
        &mut self,
        id: u32,
        end_stream: bool,
        block: &[u8],
        fields: &mut Fields,
    ) -> Result<(), Malformed> {
        let max_list = self.shared.config.max_header_list_bytes as usize;
        self.client
            .decoder
            .decode(block, fields, max_list)
            .map_err(|_| Malformed(code::COMPRESSION_ERROR))?;
        if let Some(stream) = self.streams.get_mut(&id) {
            if let Some(access) = stream.access.as_deref_mut() {
                access.blocks_in += block.len() as u64;
            }
            self.on_request_trailers(id, end_stream, fields);
            return Ok(());
        }
        if id <= self.last_stream {
            if end_stream && fields.list_size() <= max_list && self.reset_sent.forget(id) {
                // Trailers the client sent before it read our reset (RFC 9113 §5.1): they
                // end the stream, so a second block on it is not ignored.
                return Ok(());
            }
            // A stream this side closed, its frames still on the way (RFC 9113 §5.1): a
            // stream error, not the connection's.
            match fields.list_size() > max_list {
                true => self.glitches_of(OVERSIZE_GLITCHES),
                false => self.glitch(),
            }
            frame::write_rst_stream(self.client.out.queue(), id, code::STREAM_CLOSED);
            return Ok(());
        }
        self.last_stream = id;
        if self.going_away.is_some_and(|g| g.last) {
            // Past the GOAWAY's last stream: ignored (RFC 9113 §6.8).
            return Ok(());
        }
        // Streams the client sees closed (both ends sent) may still be draining to their
        // backend: they do not count against the limit it was told.
        let open = self
            .streams
            .values()
            .filter(|s| !(s.up.end && s.down.ended))
            .count();
        if open >= self.shared.config.max_streams as usize {
            self.glitch();
            if protocol_api::access::enabled() && self.may_log_refused() {
                let mut access = AccessRecord::new(|name| fields.get(name), block.len());
                access.reason = Some("refused (REFUSED_STREAM): its streams limit".into());
                self.write_access_record(&access, (access.blocks_in, 0), Duration::ZERO);
            }
            self.reset_client(id, code::REFUSED_STREAM);
            return Ok(());
        }
        let down = Flow::new(self.client.initial_window);
        let mut up = Flow::new(0);
        up.end = end_stream;
        let mut stream = Stream {
            target: Target::Local,
            request: None,
            up,
            down,
            responded: false,
            path: "".into(),
            route: None,
            began: Instant::now(),
            held: None,
            detached: false,
            access: protocol_api::access::enabled()
                .then(|| Box::new(AccessRecord::new(|name| fields.get(name), block.len()))),
        };
        if fields.list_size() > max_list {
            // Decoding it went on past the limit (to keep the table in step), and a block
            // of names copied from the table costs milliseconds: such a request counts as
            // OVERSIZE_GLITCHES frames that move no request, so a client gets GOAWAY after
            // ten of them in ten seconds.
            self.glitches_of(OVERSIZE_GLITCHES);
            self.shared.stats.route(None).streams.inc();
            self.streams.insert(id, stream);
            self.answer(id, 431, "the request's header fields are too large");
            return Ok(());
        }
        match message::route_request(&self.shared.config, fields, &mut self.forwarding) {
            Ok(routed) if end_stream && routed.content_length.is_some_and(|n| n > 0) => {
                log::debug!(
                    "h2c {}: stream {id} malformed: a content-length and no body",
                    self.peer_addr
                );
                self.glitch();
                self.refused_line(&mut stream, "a content-length and no body");
                self.reset_client(id, code::PROTOCOL_ERROR);
            }
            Ok(routed) => {
                self.shared.stats.route(Some(routed.route)).streams.inc();
                stream.route = Some(routed.route);
                stream.up.remaining = routed.content_length;
                stream.path = routed.path.into();
                stream.request = Some(routed.block);
                self.streams.insert(id, stream);
                self.place_new(id, routed.route);
            }
            Err(Refused::Malformed(why)) => {
                log::debug!("h2c {}: stream {id} malformed: {why}", self.peer_addr);
                self.glitch();
                self.refused_line(&mut stream, why);
                self.reset_client(id, code::PROTOCOL_ERROR);
            }
            Err(Refused::Answer(status, text)) => {
                log::debug!("h2c {}: stream {id}: {status} {text}", self.peer_addr);
                self.shared.stats.route(None).streams.inc();
                self.streams.insert(id, stream);
                self.answer(id, status, &text);
            }
        }
        Ok(())
    }

    /// The access line of a request refused as malformed (reset with PROTOCOL_ERROR), as
    /// an HTTP/1.1 server logs its `400`s.
    fn refused_line(&self, stream: &mut Stream, why: &str) {
        if stream.access.is_none() || !self.may_log_refused() {
            return;
        }
        if let Some(access) = stream.access.as_deref_mut() {
            access.reason = Some(format!("malformed (PROTOCOL_ERROR): {why}"));
        }
        self.write_access(stream);
    }

    /// Whether this client address may have another refused stream's line written now
    /// ([`super::REFUSED_LINES_PER_CLIENT`]).
    fn may_log_refused(&self) -> bool {
        let client = protocol_api::clients::key(self.peer_addr.ip());
        self.shared.refused_lines.allow(client)
    }

    pub(super) fn on_request_trailers(&mut self, id: u32, end_stream: bool, fields: &Fields) {
        let max_list = self.shared.config.max_header_list_bytes as usize;
        let stream = self.streams.get_mut(&id).expect("the caller found it");
        let short = stream.target != Target::Local && !stream.up.fits_length(0, true);
        let mut block = Vec::new();
        let passed = message::pass_trailers(fields, max_list, &mut block);
        if let Err(why) = passed.as_ref() {
            log::debug!(
                "h2c {}: stream {id}'s trailers refused: {why}",
                self.peer_addr
            );
        }
        if !end_stream || stream.up.end || short || passed.is_err() {
            return self.refuse(id, code::PROTOCOL_ERROR);
        }
        stream.up.end = true;
        match stream.target {
            Target::Local => stream.up.ended = true,
            Target::Backend(_) => stream.up.trailers = Some(block),
        }
        self.drain_up(id);
        self.settle(id);
    }

    pub(super) fn on_client_data(&mut self, head: Head, payload: &[u8]) -> Result<(), Malformed> {
        if head.stream == 0 {
            return Err(Malformed(code::PROTOCOL_ERROR));
        }
        self.client.receive(head.len)?;
        let data = frame::unpadded(&head, payload)?;
        let counted = head.len as usize;
        let end = head.has(flag::END_STREAM);
        if data.is_empty() && !end {
            self.glitch();
        }
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            if head.stream > self.last_stream {
                return Err(Malformed(code::PROTOCOL_ERROR));
            }
            self.client.give_back(counted);
            let ignored = match end {
                true => self.reset_sent.forget(head.stream),
                false => self.reset_sent.contains(head.stream),
            };
            if ignored {
                // Sent before the client read our reset: ignored (RFC 9113 §5.1), its
                // window given back. Not a glitch: a client uploading in small frames
                // has hundreds of them on the way. (The last ends the stream: after it,
                // frames on it count.)
                return Ok(());
            }
            self.glitch();
            // (Not remembered as a reset: the next frame on it counts too.)
            frame::write_rst_stream(self.client.out.queue(), head.stream, code::STREAM_CLOSED);
            return Ok(());
        };
        let local = stream.target == Target::Local;
        if !local && !stream.up.end && !stream.up.fits_length(data.len(), end) {
            self.client.give_back(counted);
            self.refuse(head.stream, code::PROTOCOL_ERROR);
            return Ok(());
        }
        if stream.up.end || i64::from(head.len) > stream.up.recv_window {
            let error = if stream.up.end {
                code::STREAM_CLOSED
            } else {
                code::FLOW_CONTROL_ERROR
            };
            self.client.give_back(counted);
            self.refuse(head.stream, error);
            return Ok(());
        }
        let passed = match stream.target {
            Target::Backend(slot) if stream.request.is_none() => {
                let backend = self.backends[slot]
                    .as_mut()
                    .expect("a stream's backend is kept");
                stream
                    .up
                    .take(head.stream, data, counted, end, &mut backend.peer)
            }
            Target::Backend(_) => {
                // Waits with the request for its backend connection.
                stream.up.recv_window -= counted as i64;
                stream.up.end |= end;
                stream.up.pending.extend_from_slice(data);
                counted - data.len()
            }
            Target::Local => {
                // The answer does not wait for the request: its body is dropped.
                stream.up.recv_window -= counted as i64;
                stream.up.end |= end;
                stream.up.ended |= end;
                counted
            }
        };
        self.client.give_back(passed);
        if let Some(increment) = stream.up.give_back(passed) {
            frame::write_window_update(self.client.out.queue(), head.stream, increment);
        }
        self.settle(head.stream);
        Ok(())
    }
}

/// `bytes` begin with a whole frame.
fn has_frame(bytes: &[u8]) -> bool {
    Head::parse(bytes).is_some_and(|head| bytes.len() >= frame::HEAD_LEN + head.len as usize)
}
