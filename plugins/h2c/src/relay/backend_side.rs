//! The relay's backend side: streams placed on a route's backend connection (dialled when
//! there is none, counted by [`crate::slots`]), backends read while the client can take
//! more and its address is within its budget ([`super::held`]), their frames acted on and
//! their answers passed on, and a backend that fails answered for on its streams.

use super::backend::{Backend, State};
use super::held::UNCOUNTED;
use super::message::Response;
use super::stream::{Stream, Target};
use super::{
    holding, message, with_fields, Relay, BACKEND_IDLE, MAX_RESPONSE_FIELDS, OUT_KEEP, OUT_LIMIT,
    SCRATCH, WAITING_BLOCKS,
};
use crate::frame::{self, code, flag, kind, Head, Malformed};
use crate::hpack::Fields;
use protocol_api::throttle::Throttle;
use protocol_api::Io;
use std::collections::HashMap;
use std::io::{self, ErrorKind, Read};
use std::os::fd::AsFd;
use std::time::Instant;

impl Relay {
    /// A new stream's request, if there is room for it to wait (see [`WAITING_BLOCKS`]):
    /// a waiting request holds its header block written out in full (up to
    /// SWITCHYARD_H2C_MAX_HEADER_LIST_BYTES) from a few bytes that name the client's HPACK
    /// table. Past it the stream is refused, and the client may send it again (RFC 9113
    /// §8.7).
    pub(super) fn place_new(&mut self, id: u32, route: usize) {
        let waiting: usize = self
            .streams
            .values()
            .filter_map(|s| s.request.as_ref().map(Vec::len))
            .sum();
        if waiting > WAITING_BLOCKS {
            log::debug!(
                "h2c {}: stream {id} refused: {waiting} bytes of requests wait already",
                self.peer_addr
            );
            return self.refuse(id, code::REFUSED_STREAM);
        }
        self.place(id, route);
    }

    /// Gives a routed stream to its backend connection, dialling one if there is none.
    pub(super) fn place(&mut self, id: u32, route: usize) {
        let slot = self.backends.iter().position(|b| {
            b.as_ref()
                .is_some_and(|b| b.route == route && !b.going_away)
        });
        let slot = match slot {
            Some(slot) => slot,
            None => {
                let Some(address) = self.shared.addresses.get(route).copied().flatten() else {
                    return self.answer_failed(id, 502, "could not be resolved");
                };
                let taken = self.shared.backend_slots.take(self.peer_addr.ip());
                let held = match taken {
                    Ok(held) => held,
                    Err(none) => {
                        let why = self.shared.backend_slots.reason(none);
                        static NO_SLOT: Throttle = Throttle::new();
                        if let Some(unlogged) = NO_SLOT.admit() {
                            log::warn!("h2c {}: {why}: 503{unlogged}", self.peer_addr);
                        }
                        return self.answer(id, 503, why);
                    }
                };
                let deadline = Instant::now() + self.shared.config.connect_timeout;
                match Backend::dial(route, address, deadline, held) {
                    Ok(backend) => {
                        let free = self.backends.iter().position(Option::is_none);
                        match free {
                            Some(free) => {
                                self.backends[free] = Some(backend);
                                free
                            }
                            None => {
                                self.backends.push(Some(backend));
                                self.backends.len() - 1
                            }
                        }
                    }
                    Err(e) => {
                        let (status, what) = failure(&e);
                        // Once a second at most (out of descriptors, every stream's).
                        static FAILED: Throttle = Throttle::new();
                        if let Some(unlogged) = FAILED.admit() {
                            log::warn!(
                                "h2c {} -> {address}: backend {what}: {e}{unlogged}",
                                self.peer_addr
                            );
                        }
                        return self.answer_failed(id, status, what);
                    }
                }
            }
        };
        let backend = self.backends[slot].as_mut().expect("just found");
        backend.waiting.push_back(id);
        backend.idle_since = None;
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.target = Target::Backend(slot);
        }
        self.open_waiting(slot);
    }

    pub(super) fn answer_failed(&mut self, id: u32, status: u16, what: &str) {
        let path = self
            .streams
            .get(&id)
            .map(|s| s.path.to_string())
            .unwrap_or_default();
        self.answer(id, status, &format!("backend for {path} {what}"));
        self.settle(id);
    }

    /// Sends the streams waiting for the backend in `slot` while it has room.
    pub(super) fn open_waiting(&mut self, slot: usize) {
        loop {
            let Some(backend) = self.backends[slot].as_mut() else {
                return;
            };
            if !backend.has_room() {
                return;
            }
            let Some(id) = backend.waiting.pop_front() else {
                return;
            };
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            let request = stream
                .request
                .take()
                .expect("a waiting stream has its request");
            let end = stream.up.end && stream.up.is_empty();
            backend.peer.write_block(id, &request, end);
            stream.up.ended |= end;
            stream.up.send_window = i64::from(backend.peer.initial_window);
            backend.open += 1;
            self.drain_up(id);
        }
    }

    /// The loop said a watched descriptor is ready: every backend may have moved.
    pub(super) fn backends_ready(&mut self) {
        for slot in 0..self.backends.len() {
            let Some(backend) = self.backends[slot].as_mut() else {
                continue;
            };
            backend.readable = true;
            let was_open = backend.state == State::Open;
            match backend.connected() {
                Ok(true) if !was_open => self.open_waiting(slot),
                Ok(_) => {}
                Err(e) => {
                    let (status, what) = failure(&e);
                    self.fail_backend(slot, status, what, &e.to_string());
                }
            }
        }
    }

    /// Reads every backend that may have bytes while the client can take more; one stopped
    /// early keeps `readable` (the call then asks to be resumed).
    pub(super) fn read_backends(&mut self) {
        self.held_paused = None;
        for slot in 0..self.backends.len() {
            SCRATCH.with_borrow_mut(|buf| {
                let mut total = 0;
                loop {
                    if self.client.out.owed() > OUT_LIMIT {
                        return;
                    }
                    if total >= protocol_api::sizes::READ_BUDGET {
                        return;
                    }
                    let Some(backend) = self.backends[slot].as_ref() else {
                        return;
                    };
                    if !backend.readable
                        || backend.dead
                        || backend.state != State::Open
                        || backend.peer.out.owed() > OUT_LIMIT
                    {
                        return;
                    }
                    // Its address holds its budget and the connection its part: the
                    // backend waits (its windows make it), and the call is made again to
                    // see. Not a connection holding little (its address's other clients,
                    // behind one NAT, are served on: one read each past the budget), nor
                    // one whose uploads wait for the backend's windows (only reading it
                    // lets them go, and lowers the count).
                    let holding = holding(&self.client, &self.backends, self.detached_held);
                    if self.held.holds(holding)
                        && holding >= UNCOUNTED
                        && !uploads_wait_for(&self.streams, slot)
                    {
                        self.held_paused.get_or_insert_with(Instant::now);
                        return;
                    }
                    let backend = self.backends[slot].as_mut().expect("just seen");
                    let kept = backend.peer.tail.len();
                    let asked = buf.len() - kept;
                    let n = match (&backend.socket).read(&mut buf[kept..]) {
                        Ok(0) => {
                            let what = "closed the connection";
                            return self.fail_backend(slot, 502, "failed before answering", what);
                        }
                        Ok(n) => n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            backend.readable = false;
                            return;
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => {
                            return self.fail_backend(
                                slot,
                                502,
                                "failed before answering",
                                &e.to_string(),
                            );
                        }
                    };
                    buf[..kept].copy_from_slice(&backend.peer.tail);
                    backend.peer.tail.clear();
                    total += n;
                    // A short read drained it, unless the loop reported its end.
                    backend.readable = n == asked || backend.peer_closed;
                    self.backend_bytes(slot, &buf[..kept + n]);
                }
            });
        }
    }

    pub(super) fn backend_bytes(&mut self, slot: usize, bytes: &[u8]) {
        let mut at = 0;
        while let Some(head) = Head::parse(&bytes[at..]) {
            if head.len > frame::DEFAULT_MAX_FRAME {
                return self.fail_backend(
                    slot,
                    502,
                    "failed before answering",
                    "a frame over 16 KiB",
                );
            }
            let end = at + frame::HEAD_LEN + head.len as usize;
            if end > bytes.len() {
                break;
            }
            if let Err(Malformed(error)) =
                self.on_backend_frame(slot, head, &bytes[at + frame::HEAD_LEN..end])
            {
                let why = format!("broke the protocol ({error:#x})");
                return self.fail_backend(slot, 502, "failed before answering", &why);
            }
            if self.backends[slot].is_none() {
                return;
            }
            at = end;
        }
        if let Some(backend) = self.backends[slot].as_mut() {
            backend.peer.tail.extend_from_slice(&bytes[at..]);
        }
    }

    pub(super) fn on_backend_frame(
        &mut self,
        slot: usize,
        head: Head,
        payload: &[u8],
    ) -> Result<(), Malformed> {
        let backend = self.backends[slot].as_mut().expect("the caller checked");
        if backend.peer.expects_continuation() {
            if head.kind != kind::CONTINUATION {
                return Err(Malformed(code::PROTOCOL_ERROR));
            }
            if let Some(block) = backend.peer.field_block(&head, payload)? {
                self.on_response_block(slot, block.stream, block.end_stream, &block.bytes)?;
            }
            return Ok(());
        }
        match head.kind {
            kind::DATA => self.on_backend_data(slot, head, payload),
            kind::HEADERS => {
                if head.has(flag::END_HEADERS) {
                    let fragment = frame::header_fragment(&head, payload)?;
                    return self.on_response_block(
                        slot,
                        head.stream,
                        head.has(flag::END_STREAM),
                        fragment,
                    );
                }
                backend.peer.field_block(&head, payload)?;
                Ok(())
            }
            kind::CONTINUATION | kind::PUSH_PROMISE => Err(Malformed(code::PROTOCOL_ERROR)),
            kind::RST_STREAM => {
                let error = frame::word(payload, false)?;
                let ours = self
                    .streams
                    .get(&head.stream)
                    .is_some_and(|s| s.target == Target::Backend(slot) && s.request.is_none());
                if !ours {
                    return Ok(());
                }
                let stream = &self.streams[&head.stream];
                if stream.responded && error == code::NO_ERROR && stream.down.end {
                    // The whole answer is in and the backend wants no more of the request
                    // (RFC 9113 §8.1).
                    self.detach(head.stream, slot);
                } else if stream.responded || error == code::REFUSED_STREAM {
                    // Once the answer began, the reset reaches the client; before it, only
                    // REFUSED_STREAM does: not processed, the client may try again (RFC 9113
                    // §8.7). Any other reset before an answer is a 502, below.
                    log::debug!(
                        "h2c {}: stream {} reset by the backend ({error:#x})",
                        self.peer_addr,
                        head.stream
                    );
                    self.reset_client(head.stream, error);
                    let stream = self.take_stream(head.stream).expect("just found");
                    self.client.give_back(stream.up.pending.len());
                    if let Some(backend) = self.backends[slot].as_mut() {
                        backend.peer.give_back(stream.down.pending.len());
                    }
                    self.closed_on_backend(slot);
                } else {
                    static RESET: Throttle = Throttle::new();
                    if let Some(unlogged) = RESET.admit() {
                        log::warn!(
                            "h2c {} {} -> backend: reset before answering ({error:#x}){unlogged}",
                            self.peer_addr,
                            protocol_api::fields::path_for_log(&stream.path)
                        );
                    }
                    self.closed_on_backend(slot);
                    self.answer_failed(head.stream, 502, "failed before answering");
                }
                Ok(())
            }
            kind::SETTINGS => {
                if head.has(flag::ACK) {
                    return Ok(());
                }
                let changed = backend.peer.settings(payload, false)?;
                if let Some(max) = changed.max_streams {
                    backend.max_streams = max;
                }
                if changed.window_delta != 0 {
                    let ids: Vec<u32> = self
                        .streams
                        .iter_mut()
                        .filter(|(_, s)| s.target == Target::Backend(slot) && s.request.is_none())
                        .map(|(&id, s)| {
                            s.up.send_window += changed.window_delta;
                            id
                        })
                        .collect();
                    for id in ids {
                        self.drain_up(id);
                    }
                }
                self.open_waiting(slot);
                Ok(())
            }
            kind::PING => {
                if payload.len() != 8 {
                    return Err(Malformed(code::FRAME_SIZE_ERROR));
                }
                if !head.has(flag::ACK) {
                    frame::write(backend.peer.out.queue(), kind::PING, flag::ACK, 0, payload);
                }
                Ok(())
            }
            kind::GOAWAY => {
                let last = frame::word(
                    payload.get(..4).ok_or(Malformed(code::FRAME_SIZE_ERROR))?,
                    true,
                )?;
                backend.going_away = true;
                let route = backend.route;
                let waiting: Vec<u32> = backend.waiting.drain(..).collect();
                // Streams it will not process may be tried again (RFC 9113 §8.7).
                let unprocessed: Vec<u32> = self
                    .streams
                    .iter()
                    .filter(|(&id, s)| {
                        id > last && s.target == Target::Backend(slot) && s.request.is_none()
                    })
                    .map(|(&id, _)| id)
                    .collect();
                for id in unprocessed {
                    self.reset(id, code::REFUSED_STREAM);
                }
                for id in waiting {
                    self.place(id, route);
                }
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                let increment = frame::word(payload, true)?;
                if head.stream == 0 {
                    backend.peer.window_update(increment)?;
                    let ids: Vec<u32> = self
                        .streams
                        .iter()
                        .filter(|(_, s)| s.target == Target::Backend(slot) && !s.up.is_empty())
                        .map(|(&id, _)| id)
                        .collect();
                    for id in ids {
                        self.drain_up(id);
                    }
                    return Ok(());
                }
                if let Some(stream) = self.streams.get_mut(&head.stream) {
                    if stream.target == Target::Backend(slot) {
                        stream.up.send_window += i64::from(increment);
                        self.drain_up(head.stream);
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    pub(super) fn on_response_block(
        &mut self,
        slot: usize,
        id: u32,
        end_stream: bool,
        block: &[u8],
    ) -> Result<(), Malformed> {
        with_fields(|fields| self.response_fields(slot, id, end_stream, block, fields))
    }

    pub(super) fn response_fields(
        &mut self,
        slot: usize,
        id: u32,
        end_stream: bool,
        block: &[u8],
        fields: &mut Fields,
    ) -> Result<(), Malformed> {
        let backend = self.backends[slot].as_mut().expect("the caller checked");
        backend
            .peer
            .decoder
            .decode(block, fields, MAX_RESPONSE_FIELDS)
            .map_err(|_| Malformed(code::COMPRESSION_ERROR))?;
        let Some(stream) = self
            .streams
            .get_mut(&id)
            .filter(|s| s.target == Target::Backend(slot) && s.request.is_none())
        else {
            // A stream the client reset meanwhile.
            return Ok(());
        };
        let mut out = Vec::with_capacity(block.len() + 16);
        let passed = match fields.list_size() > MAX_RESPONSE_FIELDS {
            true => Err("fields too large"),
            false => message::pass_response(fields, &mut out),
        };
        match passed {
            Ok(Response::Interim) if !stream.responded && !end_stream => {
                if let Some(access) = stream.access.as_deref_mut() {
                    access.blocks_out += out.len() as u64;
                }
                self.client.write_block(id, &out, false);
            }
            Ok(Response::Final) if !stream.responded => {
                stream.responded = true;
                let stats = self.shared.stats.route(stream.route);
                stats.latency.observe_micros(stream.began.elapsed());
                let status = fields
                    .get(b":status")
                    .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok());
                if let Some(status) = status {
                    stats.answered(status);
                    let extra = &self.shared.config.response_fields;
                    message::add_extra(fields, status, self.tls.is_some(), extra, &mut out);
                }
                if let Some(access) = stream.access.as_deref_mut() {
                    access.status = status;
                    access.blocks_out += out.len() as u64;
                }
                let end = end_stream;
                self.client.write_block(id, &out, end);
                if end {
                    stream.down.end = true;
                    stream.down.ended = true;
                    self.settle(id);
                }
            }
            Ok(Response::Trailers) if stream.responded && end_stream => {
                if let Some(access) = stream.access.as_deref_mut() {
                    access.blocks_out += out.len() as u64;
                }
                stream.down.trailers = Some(out);
                stream.down.end = true;
                self.drain_down(id);
            }
            Ok(_) | Err(_) => {
                static AGAINST: Throttle = Throttle::new();
                if let Some(unlogged) = AGAINST.admit() {
                    log::warn!(
                        "h2c {} {} -> backend: a response against the protocol{unlogged}",
                        self.peer_addr,
                        protocol_api::fields::path_for_log(&stream.path)
                    );
                }
                if stream.responded {
                    self.reset(id, code::INTERNAL_ERROR);
                } else {
                    let backend = self.backends[slot].as_mut().expect("the caller checked");
                    frame::write_rst_stream(backend.peer.out.queue(), id, code::PROTOCOL_ERROR);
                    self.closed_on_backend(slot);
                    self.answer_failed(id, 502, "failed before answering");
                }
            }
        }
        Ok(())
    }

    pub(super) fn on_backend_data(
        &mut self,
        slot: usize,
        head: Head,
        payload: &[u8],
    ) -> Result<(), Malformed> {
        let backend = self.backends[slot].as_mut().expect("the caller checked");
        backend.peer.receive(head.len)?;
        let data = frame::unpadded(&head, payload)?;
        let counted = head.len as usize;
        let ours = self.streams.get(&head.stream).is_some_and(|s| {
            s.target == Target::Backend(slot) && s.request.is_none() && s.responded && !s.down.end
        });
        if !ours || i64::from(head.len) > self.streams[&head.stream].down.recv_window {
            // A stream the client reset meanwhile, or one against the rules: dropped.
            backend.peer.give_back(counted);
            if self
                .streams
                .get(&head.stream)
                .is_some_and(|s| s.target == Target::Backend(slot))
            {
                self.reset(head.stream, code::INTERNAL_ERROR);
            }
            return Ok(());
        }
        let stream = self.streams.get_mut(&head.stream).expect("just found");
        let passed = stream.down.take(
            head.stream,
            data,
            counted,
            head.has(flag::END_STREAM),
            &mut self.client,
        );
        let backend = self.backends[slot].as_mut().expect("the caller checked");
        backend.peer.give_back(passed);
        if let Some(increment) = stream.down.give_back(passed) {
            frame::write_window_update(backend.peer.out.queue(), head.stream, increment);
        }
        self.settle(head.stream);
        Ok(())
    }

    /// A backend connection failed: its streams not yet answered are answered `status`,
    /// the others reset; it is let go.
    pub(super) fn fail_backend(&mut self, slot: usize, status: u16, what: &str, why: &str) {
        let Some(backend) = self.backends[slot].as_mut() else {
            return;
        };
        let address = backend.address;
        backend.going_away = true;
        backend.waiting.clear();
        // Answers that came whole still reach the client (a backend may close gracefully
        // once it answered: nginx at `keepalive_requests`); the others are let go.
        let (whole, ids): (Vec<u32>, Vec<u32>) = (self.streams.iter())
            .filter(|(_, s)| s.target == Target::Backend(slot))
            .map(|(&id, _)| id)
            .partition(|id| self.streams[id].responded && self.streams[id].down.end);
        for id in whole {
            self.detach(id, slot);
        }
        // Once a second at most: a backend down fails every client connection's.
        static FAILED: Throttle = Throttle::new();
        if !ids.is_empty() {
            if let Some(unlogged) = FAILED.admit() {
                log::warn!(
                    "h2c {} -> {address}: backend {what}: {why}; {} streams let go{unlogged}",
                    self.peer_addr,
                    ids.len()
                );
            }
        }
        for id in ids {
            if self.streams[&id].responded {
                self.reset(id, code::INTERNAL_ERROR);
            } else {
                self.answer_failed(id, status, what);
            }
        }
        if let Some(backend) = self.backends[slot].as_mut() {
            backend.dead = true;
            backend.readable = false;
        }
    }

    /// Watches new backends, closes unused ones, and writes what each is owed.
    pub(super) fn tend_backends(&mut self, io: &Io<'_>) {
        let now = Instant::now();
        for slot in 0..self.backends.len() {
            let Some(backend) = self.backends[slot].as_mut() else {
                continue;
            };
            let unused_for = backend.idle_since.map(|since| now.duration_since(since));
            if backend.dead
                || (backend.is_unused() && unused_for.is_some_and(|d| d >= BACKEND_IDLE))
            {
                if backend.watched {
                    let _ = io.unwatch(backend.socket.as_fd());
                }
                if backend.granted {
                    self.held.release(super::peer::GRANT);
                }
                self.backends[slot] = None;
                continue;
            }
            if !backend.watched {
                if let Err(e) = io.watch(backend.socket.as_fd()) {
                    log::warn!(
                        "h2c {}: cannot watch a backend connection: {e}",
                        self.peer_addr
                    );
                    self.fail_backend(slot, 502, "could not be reached", &e.to_string());
                    continue;
                }
                backend.watched = true;
            }
            if backend.state == State::Open && !backend.dead && !backend.peer.out.is_done() {
                if let Err(e) = backend.peer.out.flush(&mut &backend.socket, OUT_KEEP) {
                    self.fail_backend(slot, 502, "failed before answering", &e.to_string());
                }
            }
        }
        while let Some(None) = self.backends.last() {
            self.backends.pop();
        }
    }
}

/// Streams open on the backend in `slot` hold bytes of their uploads for its windows.
fn uploads_wait_for(streams: &HashMap<u32, Stream>, slot: usize) -> bool {
    (streams.values()).any(|s| {
        s.target == Target::Backend(slot) && s.request.is_none() && !s.up.pending.is_empty()
    })
}

/// The status and words for a backend that could not be reached.
fn failure(error: &io::Error) -> (u16, &'static str) {
    match error.kind() {
        ErrorKind::TimedOut => (504, "did not answer in time"),
        ErrorKind::ConnectionRefused => (502, "refused the connection"),
        _ => (502, "could not be reached"),
    }
}
