//! The service side of a routed connection: what the client's messages owe the service,
//! what the service's bytes become for the client, and a program's stderr in the log.
//!
//! Each direction holds at most one read's worth until the other side takes it: the
//! client's message bytes wait in [`Relay::to_backend`] (at most [`HOLD`] more are taken
//! from the client while any wait), and the service's bytes become messages only while
//! the client has taken everything before them.

use crate::backend::Backend;
use crate::frame::{opcode, write_frame};
use crate::stderr_log;
use protocol_api::output::Output;
use std::io::{self, ErrorKind, Read};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// Most bytes of the client's messages gathered for the service before the client is read
/// no further until the service takes them.
pub const HOLD: usize = 64 * 1024;
/// Longest line kept waiting for its newline; longer, it goes out as it is, in pieces of
/// this size cut between characters.
const MAX_LINE: usize = 64 * 1024;
/// Capacity a buffer keeps once emptied; a larger one is freed. (Twice [`HOLD`] was kept:
/// every routed connection that ever carried a message of 64 KiB held 128 KiB from then
/// on, idle, 320 MB over one address's 2,500 connections, an attacker's review found.)
const KEEP: usize = 4 * 1024;
/// Most bytes of a program's stderr read in one call; the rest comes on the next.
const STDERR_BUDGET: usize = 64 * 1024;
/// While its lines come faster than they may be logged, a program's stderr is not read
/// (nor watched) for this long at a time: its pipe fills and holds the program back, as a
/// slow terminal would, instead of every line costing the loop a wake-up and a read (an
/// attacker's review: a program writing a line for each message of a client's, 7 million
/// in 10 s, took 90% of a core to read and drop).
const STDERR_PAUSE: Duration = Duration::from_millis(100);

/// The service side of a routed connection.
pub struct Relay {
    pub backend: Backend,
    watching: bool,
    /// Payloads from the client the service has not taken yet.
    to_backend: Output,
    /// `exec:` (websocketd's text mode): each line of the program's output is a text
    /// message, and each message to it is followed by a newline.
    pub lines: bool,
    /// The start of a line of output (or of stderr) whose end has not come yet.
    carry: Vec<u8>,
    stderr_carry: Vec<u8>,
    /// Whose allowance of stderr lines logged this program's lines spend; lines past it
    /// are counted and said with the next line logged.
    stderr_lines: StderrLines,
    stderr_unlogged: u64,
    /// Until when stderr is neither read nor watched ([`STDERR_PAUSE`]).
    stderr_paused_until: Option<Instant>,
    /// For logs: the route and, for a program, its pid.
    pub label: String,
    /// How the connection ended, for the line logged when it goes.
    pub ended: Option<String>,
}

/// The allowances of stderr lines logged that a program's lines spend: its client's, and
/// everyone's.
pub struct StderrLines {
    pub allowance: std::sync::Arc<stderr_log::Allowances>,
    /// The client's key ([`protocol_api::clients::key_of`]).
    pub client: u64,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let how = self.ended.as_deref().unwrap_or("the connection ended");
        log::info!("websocket {}: {how}", self.label);
    }
}

impl Relay {
    /// `lines`: `exec:`'s text mode. `label` names the route in logs.
    pub fn new(
        backend: Backend,
        lines: bool,
        label: String,
        stderr_lines: StderrLines,
    ) -> Box<Relay> {
        Box::new(Relay {
            backend,
            watching: false,
            to_backend: Output::default(),
            lines,
            carry: Vec::new(),
            stderr_carry: Vec::new(),
            stderr_lines,
            stderr_unlogged: 0,
            stderr_paused_until: None,
            label,
            ended: None,
        })
    }

    /// Has the event loop watch the service's descriptors (once, on the first call).
    pub fn watch(&mut self, io: &mut protocol_api::Io<'_>) -> io::Result<()> {
        if !self.watching {
            self.backend.set_nonblocking()?;
            for fd in self.backend.fds() {
                io.watch(fd)?;
            }
            self.watching = true;
        }
        Ok(())
    }

    /// A piece of a client's message for the service; true when the client should be read
    /// no further until the service has taken what waits.
    pub fn take_part(&mut self, payload: &[u8], last: bool) -> bool {
        self.to_backend.queue().extend_from_slice(payload);
        if last && self.lines {
            self.to_backend.queue().push(b'\n');
        }
        self.to_backend.owed() >= HOLD
    }

    /// Bytes of the client's that wait for the service.
    pub fn owed_len(&self) -> usize {
        self.to_backend.owed()
    }

    /// Whether bytes of the client's wait for the service.
    pub fn is_owed(&self) -> bool {
        !self.to_backend.is_done()
    }

    /// Writes what the service is owed; true when nothing is left.
    pub fn flush(&mut self) -> io::Result<bool> {
        self.to_backend.flush(&mut self.backend, KEEP)?;
        Ok(self.to_backend.is_done())
    }

    /// Reads what the service has (into `buf`) and makes it messages in `owed` (one binary
    /// message, or a text message per line for `exec:`); the bytes read (0: nothing now).
    /// The service's end is `UnexpectedEof`; a program's end with a failure is an error.
    pub fn read_service(&mut self, buf: &mut [u8], owed: &mut Vec<u8>) -> io::Result<usize> {
        match self.backend.read(buf) {
            Ok(0) => {
                if self.lines && !self.carry.is_empty() {
                    let line = String::from_utf8_lossy(&self.carry).into_owned();
                    write_frame(owed, opcode::TEXT, line.as_bytes());
                    self.carry.clear();
                }
                self.read_stderr();
                match &mut self.backend {
                    Backend::Program(program) => match program.exit_status() {
                        None => Ok(0), // output closed; its exit comes through the pidfd
                        Some(status) if status.success() => Err(ErrorKind::UnexpectedEof.into()),
                        Some(status) => Err(io::Error::other(format!(
                            "the program (pid {}) ended: {status}",
                            program.pid
                        ))),
                    },
                    _ => Err(ErrorKind::UnexpectedEof.into()),
                }
            }
            Ok(n) if self.lines => {
                self.carry.extend_from_slice(&buf[..n]);
                let mut start = 0;
                while let Some(end) = self.carry[start..].iter().position(|&b| b == b'\n') {
                    let line = &self.carry[start..start + end];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    write_frame(owed, opcode::TEXT, String::from_utf8_lossy(line).as_bytes());
                    start += end + 1;
                }
                self.carry.drain(..start);
                if self.carry.len() > MAX_LINE {
                    // Out as it is, but never a character cut in two (each half would be
                    // U+FFFD): one its end leaves incomplete waits for the next piece.
                    let whole = whole_characters(&self.carry);
                    let line = String::from_utf8_lossy(&self.carry[..whole]).into_owned();
                    write_frame(owed, opcode::TEXT, line.as_bytes());
                    self.carry.drain(..whole);
                }
                let_go_if_empty(&mut self.carry);
                Ok(n)
            }
            Ok(n) => {
                write_frame(owed, opcode::BINARY, &buf[..n]);
                Ok(n)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads and drops what the service has (at most [`HOLD`] bytes a call): the client has
    /// closed, so its output goes nowhere, but a service that answers what it reads (`cat`)
    /// would stop reading once its output was not taken.
    pub fn discard_service_output(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        let mut read = 0;
        while read < HOLD {
            match self.backend.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
        self.carry = Vec::new();
    }

    /// Logs what a program wrote to stderr, a line at a time ([`stderr_log::loggable`]),
    /// at most [`STDERR_BUDGET`] bytes read per call, and as many lines as its client's
    /// allowance ([`stderr_log::LINES_PER_CLIENT_PER_SEC`]): a program a client can make
    /// write errors must not flood the daemon's log. Past it, stderr waits unread for
    /// [`STDERR_PAUSE`] at a time. True when it stopped with more possibly there (call
    /// again).
    pub fn log_stderr(&mut self, io: &mut protocol_api::Io<'_>) -> io::Result<bool> {
        let Backend::Program(program) = &self.backend else {
            return Ok(false);
        };
        if let Some(until) = self.stderr_paused_until {
            if Instant::now() < until {
                return Ok(false);
            }
            self.stderr_paused_until = None;
            io.watch(program.stderr.as_fd())?;
        }
        let more = self.read_stderr();
        if self.stderr_unlogged > 0 {
            // The last line read was over the allowance.
            if let Backend::Program(program) = &self.backend {
                io.unwatch(program.stderr.as_fd())?;
            }
            self.stderr_paused_until = Some(Instant::now() + STDERR_PAUSE);
            return Ok(false);
        }
        Ok(more)
    }

    /// How long until stderr is read again, while it waits ([`STDERR_PAUSE`]).
    pub fn stderr_paused_for(&self) -> Option<Duration> {
        self.stderr_paused_until
            .map(|until| until.saturating_duration_since(Instant::now()))
    }

    /// Reads what stderr has (at most [`STDERR_BUDGET`]) and logs its lines, as the rate
    /// allows; true when it stopped with more possibly there.
    fn read_stderr(&mut self) -> bool {
        let Backend::Program(program) = &mut self.backend else {
            return false;
        };
        let mut buf = [0u8; 4096];
        let mut read = 0;
        let more = loop {
            if read >= STDERR_BUDGET {
                break true;
            }
            match program.stderr.read(&mut buf) {
                Ok(0) | Err(_) => break false,
                Ok(n) => {
                    read += n;
                    self.stderr_carry.extend_from_slice(&buf[..n]);
                }
            }
        };
        let mut carry = std::mem::take(&mut self.stderr_carry);
        let mut start = 0;
        // Once a line is over the allowance, the rest of this read's are counted without
        // asking again (each ask takes a lock the other loops share).
        let mut over = false;
        while let Some(end) = carry[start..].iter().position(|&b| b == b'\n') {
            over = over || !self.log_line(&carry[start..start + end]);
            self.stderr_unlogged += u64::from(over);
            start += end + 1;
        }
        carry.drain(..start);
        if carry.len() > MAX_LINE {
            over = over || !self.log_line(&carry);
            self.stderr_unlogged += u64::from(over);
            carry.clear();
        }
        let_go_if_empty(&mut carry);
        self.stderr_carry = carry;
        more
    }

    /// Logs `line` if the allowances let it; false (not logged, not counted) if not.
    fn log_line(&mut self, line: &[u8]) -> bool {
        let StderrLines { allowance, client } = &self.stderr_lines;
        if !allowance.allow(*client) {
            return false;
        }
        let line = stderr_log::loggable(line);
        match std::mem::take(&mut self.stderr_unlogged) {
            0 => log::info!("websocket {}: {line}", self.label),
            skipped => log::info!(
                "websocket {}: {line} ({skipped} earlier lines not logged: over {} a second for a client's programs, or {} for all)",
                self.label,
                stderr_log::LINES_PER_CLIENT_PER_SEC,
                stderr_log::LINES_PER_SEC
            ),
        }
        true
    }
}

/// How much of `bytes` ends on a character's end: all of it, or all but an incomplete
/// UTF-8 sequence (one to three bytes) at its end.
fn whole_characters(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(4) {
        let byte = bytes[len - back];
        if byte & 0xc0 != 0x80 {
            // The last sequence's first byte: how long it says it is.
            let needs = match byte {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf7 => 4,
                _ => 1,
            };
            return if needs > back { len - back } else { len };
        }
    }
    len
}

/// Frees a line buffer left empty if it grew past [`KEEP`].
fn let_go_if_empty(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > KEEP {
        *buf = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    /// A relay to one end of a socket pair; the other end is the service.
    fn relay(lines: bool) -> (Box<Relay>, UnixStream) {
        let (ours, service) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (
            Relay::new(
                Backend::Unix(ours),
                lines,
                "test".into(),
                StderrLines {
                    allowance: std::sync::Arc::new(stderr_log::Allowances::new()),
                    client: 0,
                },
            ),
            service,
        )
    }

    /// The text messages in `owed` (server frames: unmasked, whole).
    fn texts(mut owed: &[u8]) -> Vec<String> {
        let mut texts = Vec::new();
        while !owed.is_empty() {
            assert_eq!(owed[0], 0x81, "a whole text frame");
            let (len, at) = match owed[1] {
                126 => (u16::from_be_bytes([owed[2], owed[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(owed[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            texts.push(String::from_utf8(owed[at..at + len].to_vec()).expect("UTF-8"));
            owed = &owed[at + len..];
        }
        texts
    }

    /// Review of run 22: a line over 64 KiB went out in pieces cut inside a character,
    /// each half a U+FFFD. The pieces end between characters now, and make the line again.
    #[test]
    fn a_line_too_long_to_wait_for_is_cut_between_characters() {
        let (mut relay, mut service) = relay(true);
        let line = format!("x{}", "é".repeat(100_000));
        let written = format!("{line}\n");
        let writer = std::thread::spawn(move || service.write_all(written.as_bytes()));
        let (mut buf, mut owed) = (vec![0u8; 4096], Vec::new());
        while texts(&owed).concat().len() < line.len() {
            relay.read_service(&mut buf, &mut owed).unwrap();
        }
        writer.join().unwrap().unwrap();
        let texts = texts(&owed);
        assert_eq!(texts.concat(), line, "no character cut in two");
        assert!(texts.len() >= 3, "{} pieces", texts.len());
        let most = MAX_LINE + buf.len(); // a read past it at most
        assert!(texts.iter().all(|t| t.len() <= most));
        assert_eq!(whole_characters(b"ab\xc3"), 2);
        assert_eq!(whole_characters(b"ab\xe2\x82"), 2);
        assert_eq!(whole_characters(b"ab\xe2\x82\xac"), 5);
        assert_eq!(whole_characters(b"ab\xf0\x9f\x98"), 2);
        assert_eq!(
            whole_characters(b"ab\x80\x80\x80\x80"),
            6,
            "not UTF-8: as it is"
        );
    }

    #[test]
    fn a_large_message_taken_by_the_service_leaves_no_buffer_behind() {
        let (mut relay, mut service) = relay(false);
        relay.take_part(&vec![7u8; 70 * 1024], true);
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; 70 * 1024];
            service.read_exact(&mut got).unwrap();
        });
        while !relay.flush().unwrap() {
            std::thread::sleep(Duration::from_millis(1));
        }
        reader.join().unwrap();
        assert!(
            relay.to_backend.held() <= KEEP,
            "{}",
            relay.to_backend.held()
        );
    }

    #[test]
    fn a_long_line_of_a_programs_output_leaves_no_buffer_behind() {
        let (mut relay, mut service) = relay(true);
        let mut line = vec![b'x'; 48 * 1024];
        line.push(b'\n');
        std::io::Write::write_all(&mut service, &line).unwrap();
        let (mut buf, mut owed) = (vec![0u8; 64 * 1024], Vec::new());
        let mut read = 0;
        while read < line.len() {
            read += relay.read_service(&mut buf, &mut owed).unwrap();
        }
        assert!(owed.len() > 48 * 1024, "the line is a message");
        assert_eq!(relay.carry.capacity(), 0);
    }
}
