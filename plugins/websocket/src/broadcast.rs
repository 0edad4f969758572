//! `exec-shared:` routes: one program for all of a route's clients (websocketd's most asked
//! for feature): its output goes to every client, every client's messages go to its input.
//! A log tail, a ticker, a game.
//!
//! Each route has a broadcaster thread, started with its first client and gone with its
//! last. A client's session gets one end of a Unix socket pair and relays it as it relays a
//! `unix:` service (so the relay's limits and back-pressure hold as for any route); the
//! broadcaster holds the other end. Its stated policies:
//! - **The clients set the pace, and one that holds the others back for 2 s is dropped**:
//!   each chunk of output (whole lines, in text mode) is written to every client's socket
//!   without blocking, and what a socket does not take waits for its client. The program's
//!   output is read while no client has more than 256 KiB waiting, so a program faster than
//!   its clients waits, as it would on a pipe to one. A client with more than that waiting
//!   for 2 s (it does not read, or reads slower than the others and the program) is
//!   closed, with a log line, and the others go on: one that never reads holds them back
//!   for 2 s, once. The 2 s are the route's: for 10 s after such a drop, a client that
//!   falls behind is closed at once, so clients that keep joining and never read hold the
//!   others back 2 s in 10 at most (one already behind when another is dropped keeps its
//!   own 2 s). Memory per client, ours: at most 256 KiB and a chunk (the kernel's socket
//!   buffers come first: on loopback a TCP socket holds megabytes).
//! - **Clients' messages go to the program's input** in the order read, each a line (text
//!   mode); while the program does not read (`tail -F` never does), at most 1 MiB waits,
//!   and past that the clients are not read until it takes some, as a pipe holds back its
//!   writer: they wait, and still get the program's output. A message over 64 KiB closes
//!   its client; clients' messages not yet whole hold 4 MiB together at most, and past it
//!   the largest holder of the address holding the most is closed.
//! - **The program runs while clients are connected**: started with the first, ended (its
//!   input closed, then SIGTERM, SIGKILL, as `exec:` programs are) when the last leaves. If
//!   it exits meanwhile it is started again after 1 s, doubling up to 30 s while it keeps
//!   exiting within a minute; its exits and restarts are logged.

use crate::process::{Program, Reservation};
use mio::net::UnixStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAKE: Token = Token(0);
const PROGRAM_OUT: Token = Token(1);
const PROGRAM_ERR: Token = Token(2);
const PROGRAM_IN: Token = Token(3);
const PROGRAM_EXIT: Token = Token(4);
/// Clients' tokens start here.
const CLIENTS: usize = 16;
/// What a client's socket holds for it.
const CLIENT_BUFFER: usize = 64 * 1024;
/// The program's output is read while no client has more than this waiting.
const CLIENT_WINDOW: usize = 256 * 1024;
/// A client with output waiting this long, without taking all of it once, is dropped.
const BEHIND_FOR: Duration = Duration::from_secs(2);
/// For this long after a client was dropped for holding the others back, a client that
/// falls behind is dropped at once: the grace is the route's, not each client's, or one
/// that joined anew every half second and never read would hold everyone back for 2 s
/// in each 2.5 (an attacker's review: a reading client stalled 16 s of 20).
const GRACE_SPENT_FOR: Duration = Duration::from_secs(10);

/// How long a client that fell behind at `since` may hold the output back, the last drop
/// for it at `dropped_at`: none if it fell behind within [`GRACE_SPENT_FOR`] after that
/// drop; [`BEHIND_FOR`] otherwise (one already behind when another was dropped keeps its
/// own).
fn grace(dropped_at: Option<Instant>, since: Instant) -> Duration {
    match dropped_at {
        Some(at) if since >= at && since.duration_since(at) < GRACE_SPENT_FOR => Duration::ZERO,
        _ => BEHIND_FOR,
    }
}
/// Most of clients' input waiting for a program that does not read it; past it, clients are
/// not read until it takes some.
const INPUT_LIMIT: usize = 1024 * 1024;
/// How long a program that exited is kept while its stdout stays open (a child of its
/// holds it): its output goes on meanwhile; then it is let go and started again.
const EXIT_DRAIN: Duration = Duration::from_secs(5);
/// Longest line of output kept whole; a longer one goes out in pieces.
const LINE_LIMIT: usize = 64 * 1024;
/// Most that clients' lines not yet whole may hold together. Each may hold [`LINE_LIMIT`],
/// and uncounted 500 clients sending 64 KiB of a line each held 66 MB (an attacker's
/// review). Past it, a connection of the client (as the daemon counts clients) that holds
/// the most is dropped, its largest: dropping the one whose line grew let one address
/// fill the total and then have every other client's long line dropped (another review).
const PARTIAL_LIMIT: usize = 4 * INPUT_LIMIT;

/// "A client dropped: clients hold their most in lines not yet whole", at most once a
/// second (a client can make it happen at will).
static PARTIAL_DROPS: protocol_api::throttle::Throttle = protocol_api::throttle::Throttle::new();

/// One `exec-shared:` route's program and clients.
pub struct SharedProgram {
    argv: Vec<String>,
    binary: bool,
    env: Vec<(String, OsString)>,
    max_processes: usize,
    label: String,
    running: Mutex<Option<Running>>,
}

/// The broadcaster thread of a route with clients.
struct Running {
    /// New clients' ends, with the client each is of ([`crate::client_key`]).
    joins: Sender<(std::os::unix::net::UnixStream, u64)>,
    waker: Arc<Waker>,
}

impl SharedProgram {
    pub fn new(
        argv: Vec<String>,
        binary: bool,
        env: Vec<(String, OsString)>,
        max_processes: usize,
        label: String,
    ) -> Arc<SharedProgram> {
        Arc::new(SharedProgram {
            argv,
            binary,
            env,
            max_processes,
            label,
            running: Mutex::new(None),
        })
    }

    /// A new client (of `key`, [`crate::client_key`]): its end of the pair, for its
    /// session to relay.
    pub fn join(self: &Arc<Self>, key: u64) -> io::Result<std::os::unix::net::UnixStream> {
        let (client, ours) = std::os::unix::net::UnixStream::pair()?;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.is_none() {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
            let (joins, joined) = channel();
            let shared = self.clone();
            std::thread::Builder::new()
                .name("switchyard-ws-shared".into())
                .spawn(move || shared.broadcast(poll, joined))?;
            *running = Some(Running { joins, waker });
        }
        let handle = running.as_ref().expect("started above");
        if let Err(gone) = handle.joins.send((ours, key)) {
            // Its thread ended without saying so (a panic): a new one, once.
            *running = None;
            drop(running);
            log::error!(
                "websocket {}: the broadcaster was gone; starting it again",
                self.label
            );
            let _ = gone;
            return self.join(key);
        }
        handle.waker.wake()?;
        Ok(client)
    }

    /// The broadcaster thread: until the last client has left.
    fn broadcast(
        self: Arc<Self>,
        mut poll: Poll,
        joined: Receiver<(std::os::unix::net::UnixStream, u64)>,
    ) {
        /// However the thread ends (a panic too), the route can start a new one.
        struct Ended<'a>(&'a Mutex<Option<Running>>);
        impl Drop for Ended<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
            }
        }
        let _ended = Ended(&self.running);
        let mut state = State::new();
        let mut events = Events::with_capacity(256);
        loop {
            let behind = state
                .clients
                .values()
                .filter_map(|c| c.behind_since)
                .map(|since| since + grace(state.lag_dropped_at, since))
                .min();
            let now = Instant::now();
            let again = state.stderr_ready.then_some(now);
            let drained = state.exited_at.map(|at| at + EXIT_DRAIN);
            let timeout = [state.restart_at, behind, again, drained]
                .into_iter()
                .flatten()
                .min()
                .map(|at| at.saturating_duration_since(now));
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                log::error!("websocket {}: the broadcaster failed: {e}", self.label);
                break;
            }
            for event in events.iter() {
                match event.token() {
                    WAKE => {}
                    PROGRAM_OUT => {
                        state.output_ready = true;
                        self.program_output(&mut state, &poll);
                    }
                    PROGRAM_ERR => state.stderr_ready = true,
                    PROGRAM_IN => {
                        state.flush_input(&self.label);
                        self.resume_input(&mut state, &poll);
                    }
                    PROGRAM_EXIT => {}
                    Token(token) => {
                        if event.is_writable() && state.flush_client(token, &poll, &self.label) {
                            // A client caught up: the program's output may be read again.
                            self.program_output(&mut state, &poll);
                        }
                        if event.is_readable() || event.is_read_closed() {
                            self.client_input(&mut state, &poll, token);
                        }
                    }
                }
            }
            while let Ok((stream, client)) = joined.try_recv() {
                state.add(stream, client, &poll, &self.label);
            }
            if state.stderr_ready {
                self.program_errors(&mut state);
            }
            state.drop_behind(&poll, &self.label);
            // Whatever removed a client that held the output back (a drop, its leaving, its
            // input), the output goes on: nothing else would read it again.
            if state.output_ready {
                self.program_output(&mut state, &poll);
            }
            self.check_exit(&mut state, &poll);
            if state.clients.is_empty() {
                // Gone with the last client, unless one joined meanwhile (joins hold the
                // lock while they send, so none is lost between this look and the end).
                let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                match joined.try_recv() {
                    Ok((stream, client)) => state.add(stream, client, &poll, &self.label),
                    Err(_) => {
                        *running = None;
                        if state.program.take().is_some() {
                            log::info!(
                                "websocket {}: the last client left; the program is ended",
                                self.label
                            );
                        }
                        return;
                    }
                }
            }
            if state.program.is_none() && state.restart_at.is_none_or(|at| at <= Instant::now()) {
                self.start(&mut state, &poll);
            }
        }
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Starts the program and watches its pipes.
    fn start(&self, state: &mut State, poll: &Poll) {
        state.restart_at = None;
        let Some(slot) = Reservation::take(self.max_processes) else {
            log::warn!(
                "websocket {}: {} programs running (SWITCHYARD_WEBSOCKET_MAX_PROCESSES); \
                 starting again in {:?}",
                self.label,
                crate::process::running(),
                state.backoff
            );
            state.restart_at = Some(Instant::now() + state.backoff);
            state.backoff = (state.backoff * 2).min(Duration::from_secs(30));
            return;
        };
        match Program::start(&self.argv, self.env.clone(), slot) {
            Ok(program) => {
                let registry = poll.registry();
                let watched = [
                    (program.stdout.as_raw_fd(), PROGRAM_OUT, Interest::READABLE),
                    (program.stderr.as_raw_fd(), PROGRAM_ERR, Interest::READABLE),
                    (program.pidfd.as_raw_fd(), PROGRAM_EXIT, Interest::READABLE),
                ];
                for (fd, token, interest) in watched {
                    let _ = registry.register(&mut SourceFd(&fd), token, interest);
                }
                if let Some(stdin) = &program.stdin {
                    let fd = stdin.as_raw_fd();
                    let _ = registry.register(&mut SourceFd(&fd), PROGRAM_IN, Interest::WRITABLE);
                }
                log::info!(
                    "websocket {}: program started (pid {})",
                    self.label,
                    program.pid
                );
                state.started = Instant::now();
                state.output.clear();
                state.output_ready = true; // what it writes before its first event
                state.output_ended = false;
                state.exited_at = None;
                state.program = Some(program);
            }
            Err(e) => {
                log::error!(
                    "websocket {}: the program could not be started: {e}",
                    self.label
                );
                state.restart_at = Some(Instant::now() + state.backoff);
                state.backoff = (state.backoff * 2).min(Duration::from_secs(30));
            }
        }
    }

    /// The program exited: reaped, and started again later if clients remain.
    fn check_exit(&self, state: &mut State, poll: &Poll) {
        let Some(program) = state.program.as_mut() else {
            return;
        };
        let Some(status) = program.exit_status() else {
            return;
        };
        if !state.output_ended {
            // Its last output may still be in the pipe: it goes out first (at the pace of
            // the clients), and the pipe's end brings us back here; unless a child of its
            // keeps the pipe open, which gets EXIT_DRAIN.
            let since = *state.exited_at.get_or_insert_with(Instant::now);
            if since.elapsed() < EXIT_DRAIN {
                return;
            }
            log::warn!(
                "websocket {}: the program exited {EXIT_DRAIN:?} ago but its output is still open (a child of its holds it); letting it go",
                self.label
            );
        }
        state.exited_at = None;
        for fd in [
            program.stdout.as_raw_fd(),
            program.stderr.as_raw_fd(),
            program.pidfd.as_raw_fd(),
        ]
        .into_iter()
        .chain(program.stdin.as_ref().map(|s| s.as_raw_fd()))
        {
            let _ = poll.registry().deregister(&mut SourceFd(&fd));
        }
        // What it wrote before it ended still goes out, its last line too.
        self.program_output(state, poll);
        if !state.output.is_empty() && !self.binary {
            let mut last = std::mem::take(&mut state.output);
            last.push(b'\n');
            state.send_all(&last, poll);
        }
        state.output.clear();
        state.input.clear(); // for the program that ended, not its successor
        state.program = None;
        if state.started.elapsed() >= Duration::from_secs(60) {
            state.backoff = Duration::from_secs(1);
        }
        log::warn!(
            "websocket {}: the program exited ({status}); started again in {:?}",
            self.label,
            state.backoff
        );
        state.restart_at = Some(Instant::now() + state.backoff);
        state.backoff = (state.backoff * 2).min(Duration::from_secs(30));
    }

    /// Reads the program's output and sends it to every client (whole lines in text
    /// mode), while at least one client has taken everything sent before.
    fn program_output(&self, state: &mut State, poll: &Poll) {
        let mut buf = [0u8; 64 * 1024];
        while state.output_ready {
            if state
                .clients
                .values()
                .any(|c| c.pending.len() > CLIENT_WINDOW)
            {
                return; // that client's next writable event reads on (or its drop)
            }
            let Some(program) = state.program.as_mut() else {
                return;
            };
            let n = match program.stdout.read(&mut buf) {
                Ok(0) => {
                    state.output_ready = false;
                    state.output_ended = true;
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    state.output_ready = false;
                    return;
                }
                Err(_) => {
                    state.output_ready = false;
                    state.output_ended = true;
                    return;
                }
            };
            state.output.extend_from_slice(&buf[..n]);
            let ready = match self.binary {
                true => state.output.len(),
                false => match state.output.iter().rposition(|&b| b == b'\n') {
                    Some(at) => at + 1,
                    None if state.output.len() > LINE_LIMIT => state.output.len(),
                    None => 0,
                },
            };
            if ready > 0 {
                let chunk: Vec<u8> = state.output.drain(..ready).collect();
                state.send_all(&chunk, poll);
            }
        }
    }

    /// The program's stderr: to the log, at most ten lines a second; at most 64 KiB read a
    /// turn, so that a program flooding it cannot keep the rest waiting.
    fn program_errors(&self, state: &mut State) {
        let mut buf = [0u8; 16 * 1024];
        state.stderr_ready = false;
        let Some(program) = state.program.as_mut() else {
            return;
        };
        for _ in 0..4 {
            let n = match program.stderr.read(&mut buf) {
                Ok(0) | Err(_) => {
                    state.stderr_ready = false;
                    return;
                }
                Ok(n) => n,
            };
            state.stderr_ready = true; // more may wait: read again next turn
            let (since, count) = &mut state.stderr_logged;
            if since.elapsed() >= Duration::from_secs(1) {
                *since = Instant::now();
                *count = 0;
            }
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                *count += 1;
                if *count <= 10 {
                    log::warn!("websocket {} (pid {}): {line}", self.label, program.pid);
                }
            }
        }
    }

    /// A client's messages (lines, in text mode) for the program's input; its end. While
    /// more than [`INPUT_LIMIT`] waits for the program, clients are not read (their
    /// sessions, and so they, wait), as a program's stdin pipe holds back one writer.
    fn client_input(&self, state: &mut State, poll: &Poll, token: usize) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if state.input.len() > INPUT_LIMIT {
                state.input_full = true;
                return; // read again once the program took some ([`Self::resume_input`])
            }
            let Some(client) = state.clients.get_mut(&token) else {
                return;
            };
            match client.stream.read(&mut buf) {
                Ok(0) => return state.remove(token, poll),
                Ok(n) => {
                    let before = client.partial.len();
                    client.partial.extend_from_slice(&buf[..n]);
                    state.partial_held += n;
                    let ready = match self.binary {
                        true => client.partial.len(),
                        false => client
                            .partial
                            .iter()
                            .rposition(|&b| b == b'\n')
                            .map_or(0, |at| at + 1),
                    };
                    if client.partial.len() - ready > LINE_LIMIT {
                        log::warn!(
                            "websocket {}: a client dropped: a message longer than {} KiB",
                            self.label,
                            LINE_LIMIT / 1024
                        );
                        return state.remove(token, poll);
                    }
                    let lines: Vec<u8> = client.partial.drain(..ready).collect();
                    let after = client.partial.len();
                    // What a long line left behind is not kept for a quiet client.
                    if client.partial.capacity() > 2 * after.max(4096) {
                        client.partial.shrink_to(after);
                    }
                    state.partial_held -= ready;
                    // As many go as it takes to be under the total again (one whose line
                    // grew may have grown by more than the one dropped held).
                    let mut this_one_dropped = false;
                    while after > before && state.partial_held > PARTIAL_LIMIT {
                        match state.drop_largest_partial(poll, &self.label) {
                            Some(dropped) => this_one_dropped |= dropped == token,
                            None => break,
                        }
                    }
                    if this_one_dropped {
                        return;
                    }
                    state.input.extend_from_slice(&lines);
                    state.flush_input(&self.label);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return state.remove(token, poll),
            }
        }
    }

    /// The program took some of what waited: every client is read again (their readable
    /// events were spent while input was full).
    fn resume_input(&self, state: &mut State, poll: &Poll) {
        if !state.input_full || state.input.len() > INPUT_LIMIT {
            return;
        }
        state.input_full = false;
        let tokens: Vec<usize> = state.clients.keys().copied().collect();
        for token in tokens {
            self.client_input(state, poll, token);
        }
    }
}

struct Client {
    stream: UnixStream,
    /// The client it is of ([`crate::client_key`]).
    key: u64,
    /// Input not yet a whole line.
    partial: Vec<u8>,
    /// Output its socket has not taken yet (at most [`CLIENT_WINDOW`] and a chunk).
    pending: Vec<u8>,
    /// Since when more than [`CLIENT_WINDOW`] has waited for it (holding the program's
    /// output back for everyone).
    behind_since: Option<Instant>,
}

struct State {
    program: Option<Program>,
    /// The program's output may hold bytes (its event came, and no read has found it
    /// empty since).
    output_ready: bool,
    /// The program's stdout reached its end: only then is a program that exited let go,
    /// so that what it wrote last (still in the pipe while a client held the output back,
    /// or written after a read found the pipe empty) goes out.
    output_ended: bool,
    /// When the program was seen to have exited with its stdout still open.
    exited_at: Option<Instant>,
    clients: HashMap<usize, Client>,
    next_client: usize,
    /// Output not yet a whole line.
    output: Vec<u8>,
    /// Clients' input the program has not taken.
    input: Vec<u8>,
    restart_at: Option<Instant>,
    backoff: Duration,
    started: Instant,
    stderr_logged: (Instant, u32),
    /// The program's stderr may hold more (read a budget at a time).
    stderr_ready: bool,
    /// Clients are not read: their input waits for the program (see `client_input`).
    input_full: bool,
    /// What clients' lines not yet whole hold together, against [`PARTIAL_LIMIT`].
    partial_held: usize,
    /// When a client was last dropped for holding the output back (see [`grace`]).
    lag_dropped_at: Option<Instant>,
}

impl State {
    fn new() -> State {
        State {
            program: None,
            output_ready: false,
            output_ended: false,
            exited_at: None,
            clients: HashMap::new(),
            next_client: CLIENTS,
            output: Vec::new(),
            input: Vec::new(),
            restart_at: None,
            backoff: Duration::from_secs(1),
            started: Instant::now(),
            stderr_logged: (Instant::now(), 0),
            stderr_ready: false,
            input_full: false,
            partial_held: 0,
            lag_dropped_at: None,
        }
    }

    fn add(&mut self, stream: std::os::unix::net::UnixStream, key: u64, poll: &Poll, label: &str) {
        let prepared = stream
            .set_nonblocking(true)
            .and_then(|()| socket2::SockRef::from(&stream).set_send_buffer_size(CLIENT_BUFFER));
        if let Err(e) = prepared {
            log::warn!("websocket {label}: a client could not be added: {e}");
            return;
        }
        let mut stream = UnixStream::from_std(stream);
        let token = self.next_client;
        self.next_client += 1;
        if poll
            .registry()
            .register(&mut stream, Token(token), Interest::READABLE)
            .is_ok()
        {
            self.clients.insert(
                token,
                Client {
                    stream,
                    key,
                    partial: Vec::new(),
                    pending: Vec::new(),
                    behind_since: None,
                },
            );
        }
    }

    /// Clients' lines not yet whole hold more than [`PARTIAL_LIMIT`]: drops the largest
    /// holder of the client (address) that holds the most, and says which token it was.
    fn drop_largest_partial(&mut self, poll: &Poll, label: &str) -> Option<usize> {
        let mut by_key: HashMap<u64, usize> = HashMap::new();
        for client in self.clients.values() {
            *by_key.entry(client.key).or_default() += client.partial.len();
        }
        let (&key, &held) = by_key.iter().max_by_key(|(_, &held)| held)?;
        let (&token, _) = self
            .clients
            .iter()
            .filter(|(_, client)| client.key == key)
            .max_by_key(|(_, client)| client.partial.len())?;
        if let Some(unlogged) = PARTIAL_DROPS.admit() {
            log::warn!(
                "websocket {label}: a client dropped: clients hold {} MiB in lines not yet \
                 whole, its address {} KiB of it{unlogged}",
                PARTIAL_LIMIT >> 20,
                held >> 10
            );
        }
        self.remove(token, poll);
        Some(token)
    }

    fn remove(&mut self, token: usize, poll: &Poll) {
        if let Some(mut client) = self.clients.remove(&token) {
            self.partial_held -= client.partial.len();
            let _ = poll.registry().deregister(&mut client.stream);
        }
    }

    /// Sends `chunk` to every client; what a socket does not take waits for its client.
    fn send_all(&mut self, chunk: &[u8], poll: &Poll) {
        let mut gone = Vec::new();
        for (&token, client) in self.clients.iter_mut() {
            let was_waiting = !client.pending.is_empty();
            if was_waiting {
                client.pending.extend_from_slice(chunk);
                if client.pending.len() > CLIENT_WINDOW {
                    client.behind_since.get_or_insert_with(Instant::now);
                }
                continue;
            }
            let taken = match client.stream.write(chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                Err(_) => {
                    gone.push(token);
                    continue;
                }
            };
            client.pending.extend_from_slice(&chunk[taken..]);
            if client.pending.len() > CLIENT_WINDOW {
                client.behind_since.get_or_insert_with(Instant::now);
            }
            if !client.pending.is_empty() {
                let interest = Interest::READABLE | Interest::WRITABLE;
                let _ = poll
                    .registry()
                    .reregister(&mut client.stream, Token(token), interest);
            }
        }
        for token in gone {
            self.remove(token, poll);
        }
    }

    /// Drops the clients that have been behind for their [`grace`]; true if one was.
    fn drop_behind(&mut self, poll: &Poll, label: &str) -> bool {
        let now = Instant::now();
        let dropped_at = self.lag_dropped_at;
        let late: Vec<(usize, Duration)> = self
            .clients
            .iter()
            .filter_map(|(&token, c)| {
                let since = c.behind_since?;
                let grace = grace(dropped_at, since);
                (now.saturating_duration_since(since) >= grace).then_some((token, grace))
            })
            .collect();
        for &(token, grace) in &late {
            log::warn!(
                "websocket {label}: a client dropped: it did not take the program's output \
                 for {grace:?} (the route's grace: {BEHIND_FOR:?}, none for {GRACE_SPENT_FOR:?} \
                 after a drop)"
            );
            self.remove(token, poll);
        }
        if !late.is_empty() {
            self.lag_dropped_at = Some(now);
        }
        !late.is_empty()
    }

    /// A client's socket takes more: what waited for it. True when it is within its window
    /// again (the program's output may be read on).
    fn flush_client(&mut self, token: usize, poll: &Poll, label: &str) -> bool {
        let Some(client) = self.clients.get_mut(&token) else {
            return false;
        };
        while !client.pending.is_empty() {
            match client.stream.write(&client.pending) {
                Ok(0) => break,
                Ok(n) => {
                    client.pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::debug!("websocket {label}: a client's socket: {e}");
                    self.remove(token, poll);
                    return true;
                }
            }
        }
        if client.pending.len() <= CLIENT_WINDOW {
            client.behind_since = None;
        }
        if client.pending.is_empty() {
            client.pending = Vec::new();
            let _ =
                poll.registry()
                    .reregister(&mut client.stream, Token(token), Interest::READABLE);
        }
        client.behind_since.is_none()
    }

    /// Writes clients' input to the program as far as it takes it.
    fn flush_input(&mut self, label: &str) {
        let Some(stdin) = self.program.as_mut().and_then(|p| p.stdin.as_mut()) else {
            return;
        };
        while !self.input.is_empty() {
            match stdin.write(&self.input) {
                Ok(0) => break,
                Ok(n) => {
                    self.input.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    // Its input is closed: what waits for it can never be taken.
                    log::debug!("websocket {label}: the program's input: {e}; dropped");
                    self.input.clear();
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod grace_tests {
    use super::*;

    #[test]
    fn the_grace_is_spent_for_a_while_by_a_drop() {
        let drop = Instant::now() + Duration::from_secs(5);
        assert_eq!(grace(None, drop), BEHIND_FOR);
        // Behind after the drop, within its shadow: none.
        let soon = drop + Duration::from_secs(1);
        assert_eq!(grace(Some(drop), soon), Duration::ZERO);
        assert_eq!(grace(Some(drop), drop + GRACE_SPENT_FOR), BEHIND_FOR);
        // Behind already when the other was dropped: its own 2 s.
        let before = drop - Duration::from_secs(1);
        assert_eq!(grace(Some(drop), before), BEHIND_FOR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts `shared`'s program, waits until it has exited, and reads what output the
    /// clients' windows allow, as the broadcaster's turn would.
    fn run_until_exit(shared: &SharedProgram, state: &mut State, poll: &Poll) {
        shared.start(state, poll);
        let began = Instant::now();
        while state.program.as_mut().unwrap().exit_status().is_none() {
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "the program ran on"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        shared.program_output(state, poll);
    }

    /// A program that exits while a client holds its output back: what it wrote last
    /// waits in the pipe and still goes out once the client catches up (it was dropped
    /// with the pipe, and the others never got it: a flaky stall of the shared-program
    /// tests, where the program was then started again and waited for input).
    #[test]
    fn a_program_that_exits_while_held_back_is_let_go_only_after_its_last_output() {
        let shared = SharedProgram::new(
            vec!["/bin/sh".into(), "-c".into(), "printf 'last\\n'".into()],
            false,
            Vec::new(),
            8,
            "/test".into(),
        );
        let poll = Poll::new().unwrap();
        let mut state = State::new();
        let (mut peer, ours) = std::os::unix::net::UnixStream::pair().unwrap();
        state.add(ours, 0, &poll, "/test");
        let token = *state.clients.keys().next().unwrap();
        // The client is over its window: the output is not read.
        state.clients.get_mut(&token).unwrap().pending = vec![b'x'; CLIENT_WINDOW + 1];
        run_until_exit(&shared, &mut state, &poll);
        shared.check_exit(&mut state, &poll);
        assert!(
            state.program.is_some(),
            "let go with its output still in the pipe"
        );
        // The client caught up: the last line goes out, then the program is let go.
        state.clients.get_mut(&token).unwrap().pending.clear();
        state.output_ready = true;
        shared.program_output(&mut state, &poll);
        shared.check_exit(&mut state, &poll);
        assert!(state.program.is_none(), "reaped once its output ended");
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"last\n");
    }

    /// A program that exits while a child of its keeps its stdout open is kept (its
    /// output goes on) for EXIT_DRAIN, then let go, so that the route starts it again
    /// rather than waiting for the child for ever. (A child left in the program's group
    /// is killed when the program is reaped; this one has left it, with `setsid`.)
    #[test]
    fn a_program_whose_child_holds_its_output_is_let_go_after_the_drain() {
        // The program exits only once its child is out of its group (`ready`).
        let ready = std::env::temp_dir().join(format!("switchyard-ready-{}", std::process::id()));
        let _ = std::fs::remove_file(&ready);
        let script = format!(
            "setsid sh -c 'touch {0}; exec sleep 3' & \
             while [ ! -e {0} ]; do sleep 0.01; done; echo hi",
            ready.display()
        );
        let shared = SharedProgram::new(
            vec!["/bin/sh".into(), "-c".into(), script],
            false,
            Vec::new(),
            8,
            "/test".into(),
        );
        let poll = Poll::new().unwrap();
        let mut state = State::new();
        run_until_exit(&shared, &mut state, &poll);
        shared.check_exit(&mut state, &poll);
        assert!(state.program.is_some(), "kept while its output is open");
        assert!(!state.output_ended && state.exited_at.is_some());
        state.exited_at = Some(Instant::now() - EXIT_DRAIN);
        shared.check_exit(&mut state, &poll);
        assert!(state.program.is_none(), "let go after the drain");
        assert!(state.restart_at.is_some(), "and started again later");
        let _ = std::fs::remove_file(&ready);
    }
}
