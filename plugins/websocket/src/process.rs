//! Programs behind `exec:` routes (websocketd's behaviour): one process per connection,
//! run without a shell, its pipes non-blocking for the event loop, and every one reaped.
//!
//! Processes are started by one thread of the plugin's own, which lives as long as the
//! daemon: each child gets `PR_SET_PDEATHSIG(SIGKILL)`, which fires when the thread that
//! started it ends, so a child can never outlive the daemon, however the daemon ends. The
//! same thread ends the programs of connections that are gone: stdin closed, then SIGTERM
//! after a grace period, then SIGKILL, and waits for each.
//!
//! A program gets its three pipes and nothing else of the daemon's: every other descriptor
//! is closed at `exec` (those the daemon itself inherited open included), and every signal
//! is at its default (an ignored one would stay ignored). Each program leads a process
//! group of its own, and its signals go to the whole group: what it started (a shell
//! script's pipeline, `sleep 600 | cat`) ends with it, not reparented and outside every
//! limit; a stopping daemon gives programs their grace before it exits. Where the daemon
//! is PID 1 (a container with no init), it reaps what programs leave behind, as an init
//! would. Every `unsafe` line of the plugin is in this module but one (`masking`'s call
//! to its AVX2 loop).

use protocol_api::clients::Share;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// After stdin is closed, how long a program gets to end by itself; then as long again
/// after SIGTERM before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(2);

/// Programs running (started and not yet reaped) and slots reserved for programs about to
/// start, against `SWITCHYARD_WEBSOCKET_MAX_PROCESSES`.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// The same count as a metric (`switchyard_websocket_programs_running`), once declared.
static GAUGE: std::sync::OnceLock<protocol_api::metrics::Gauge> = std::sync::OnceLock::new();

/// Reports the count of programs running in `gauge` from now on.
pub fn count_in(gauge: protocol_api::metrics::Gauge) {
    if GAUGE.set(gauge).is_ok() {
        gauge.add(RUNNING.load(Ordering::Relaxed) as i64);
    }
}

/// Gives a slot back: its program was reaped, or none was started in it.
fn release_slot() {
    RUNNING.fetch_sub(1, Ordering::AcqRel);
    if let Some(gauge) = GAUGE.get() {
        gauge.dec();
    }
}

/// Programs running for each client, by [`client_key`], against
/// `SWITCHYARD_WEBSOCKET_MAX_PROCESSES_PER_CLIENT`: without it one address could take
/// every slot of the processes limit and hold them with idle connections.
static BY_CLIENT: Mutex<BTreeMap<u64, usize>> = Mutex::new(BTreeMap::new());

/// One client's count of one program, given back when dropped: when the program is reaped
/// (its slot of the processes limit goes then too; a client that left and came back at
/// once would otherwise have started programs without end, each still running its grace
/// period, and taken every slot of the limit).
pub struct ClientShare(u64);

impl ClientShare {
    /// Counts a program for the client at `peer` (`ip:port`) if it runs fewer than its
    /// `share` allows now ([`Share::most`]: fewer while few slots of the processes limit are
    /// free); else the most that applied.
    pub fn take(peer: &str, share: Share) -> Result<ClientShare, usize> {
        let key = crate::client_key(peer);
        let most = share.most(share.total.saturating_sub(running() + 1));
        let mut counts = BY_CLIENT.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key).or_insert(0);
        if *count >= most {
            if *count == 0 {
                counts.remove(&key);
            }
            return Err(most);
        }
        *count += 1;
        Ok(ClientShare(key))
    }
}

impl Drop for ClientShare {
    fn drop(&mut self) {
        let mut counts = BY_CLIENT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.0) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.0);
            }
        }
    }
}

/// Refusals for a programs limit (the daemon's or a client's), logged one a second at
/// most, as the daemon's own refusals (a client hammering a limit must not flood the log).
pub static REFUSALS: protocol_api::throttle::Throttle = protocol_api::throttle::Throttle::new();

/// A slot under the processes limit, taken before a program is started (so that a burst of
/// requests cannot start more than the limit) and given back when dropped, unless a
/// program was started in it: then it is given back when that program is reaped. It may
/// carry its client's share, which the started program holds.
pub struct Reservation {
    client: Option<ClientShare>,
}

impl Reservation {
    /// Takes a slot if fewer than `max` are taken.
    pub fn take(max: usize) -> Option<Reservation> {
        RUNNING
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| {
                if let Some(gauge) = GAUGE.get() {
                    gauge.inc();
                }
                Reservation { client: None }
            })
    }

    /// The slot also counts against its client's share, held by the program while it runs
    /// for that client.
    pub fn for_client(mut self, share: ClientShare) -> Reservation {
        self.client = Some(share);
        self
    }

    /// The slot now belongs to a started program, released when it is reaped (the client's
    /// share, if any, went to the [`Program`] before).
    fn keep(mut self) {
        drop(self.client.take());
        std::mem::forget(self);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        release_slot();
    }
}

/// A running program and its pipes.
pub struct Program {
    child: Option<Child>,
    pub pid: u32,
    pub stdin: Option<ChildStdin>,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
    /// Readable once the process has exited (Linux `pidfd_open`).
    pub pidfd: OwnedFd,
    pub exited: Option<ExitStatus>,
    /// Its client's count of it, given back when it is reaped.
    client: Option<ClientShare>,
}

enum Request {
    Start(Box<Command>, Reservation, Sender<io::Result<Child>>),
    /// A program to end, and its client's share, given back once it is reaped.
    End(Child, Option<ClientShare>),
}

fn starter() -> &'static Mutex<Sender<Request>> {
    static STARTER: OnceLock<Mutex<Sender<Request>>> = OnceLock::new();
    STARTER.get_or_init(|| {
        let (sender, requests) = channel();
        std::thread::Builder::new()
            .name("switchyard-ws-exec".into())
            .spawn(move || starter_thread(requests))
            .expect("start the thread that starts programs");
        // SAFETY: atexit(3) with a function of this library, which is never unloaded.
        unsafe { libc::atexit(at_exit) };
        Mutex::new(sender)
    })
}

/// How many programs run now (or are about to start).
pub fn running() -> usize {
    RUNNING.load(Ordering::Acquire)
}

/// Programs started and not yet reaped, by pid: each is reaped by its own `Child` (and
/// leads a process group of the same id).
static PROGRAMS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Programs told to end and not yet reaped: what a stopping daemon waits for.
static ENDING: AtomicUsize = AtomicUsize::new(0);

/// How often, where the daemon is PID 1, orphans are looked for.
const ORPHANS_EVERY: Duration = Duration::from_secs(1);

fn starter_thread(requests: Receiver<Request>) {
    // PID 1 (a container's only process, with no init) is every orphan's parent: what a
    // program leaves behind (killed with its group, or gone from it with `setsid`) would
    // stay a zombie for good, and the container would run out of pids.
    let init = std::process::id() == 1;
    // (child, its client's share, when its stdin was closed, SIGTERM sent)
    let mut ending: Vec<(Child, Option<ClientShare>, Instant, bool)> = Vec::new();
    let mut orphans_looked = Instant::now();
    loop {
        // Idle, it sleeps until asked, unless it reaps orphans now and then (PID 1).
        let request = match (ending.is_empty(), init) {
            (true, false) => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
            (true, true) => requests.recv_timeout(ORPHANS_EVERY),
            (false, _) => requests.recv_timeout(Duration::from_millis(50)),
        };
        if init && orphans_looked.elapsed() >= ORPHANS_EVERY {
            orphans_looked = Instant::now();
            reap_orphans();
        }
        match request {
            Ok(Request::Start(mut command, reservation, reply)) => {
                let started = command.spawn();
                if let Ok(child) = &started {
                    lock(&PROGRAMS).insert(child.id());
                }
                // The slot is settled before the caller hears: kept by a started program,
                // free again by the time a failure is reported.
                match started.is_ok() {
                    true => reservation.keep(),
                    false => drop(reservation),
                }
                let _ = reply.send(started);
            }
            Ok(Request::End(child, share)) => ending.push((child, share, Instant::now(), false)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        ending.retain_mut(|(child, _share, since, termed)| {
            if let Ok(Some(_)) | Err(_) = reap(child) {
                release_slot();
                ENDING.fetch_sub(1, Ordering::AcqRel);
                return false; // the client's share goes with it
            }
            let waited = since.elapsed();
            if !*termed && waited >= GRACE {
                signal_group(child.id(), libc::SIGTERM);
                *termed = true;
            } else if waited >= GRACE * 2 {
                signal_group(child.id(), libc::SIGKILL);
            }
            true
        });
    }
}

/// At the daemon's exit: programs told to end get the rest of their grace, as when a
/// client leaves, and the groups of all still running are killed. Without it
/// `PR_SET_PDEATHSIG` killed each program at once and what it had started lived on.
extern "C" fn at_exit() {
    let until = Instant::now() + GRACE * 2 + Duration::from_millis(200);
    while ENDING.load(Ordering::Acquire) > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Held while signalling: no program is reaped meanwhile (`reap` holds it too), so
    // each group's id is still its program's.
    for &program in lock(&PROGRAMS).iter() {
        signal_group(program, libc::SIGKILL);
    }
}

/// Sends `signal` to the process group that the program `pid` leads.
fn signal_group(pid: u32, signal: i32) {
    // SAFETY: kill(2) of the group our unreaped child leads (its id is the child's pid,
    // which cannot be reused while the child is unreaped), and a signal number; no memory
    // is involved.
    unsafe { libc::kill(-(pid as libc::pid_t), signal) };
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where the daemon is PID 1: reaps every child that is not a program (each program is
/// reaped by its own `Child`), as an init does. Its children are listed in
/// `/proc/self/task/*/children`; where the kernel has no such file, `waitid` finds them one
/// at a time, as far as the first program among them.
fn reap_orphans() {
    let mut listed = false;
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten();
    for task in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        listed = true;
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            if !lock(&PROGRAMS).contains(&pid) {
                // SAFETY: waitpid(2) on a child of ours that is no program (no `Child`
                // owns it, so no other wait is for it); it writes only the status.
                unsafe { libc::waitpid(pid as libc::pid_t, &mut 0, libc::WNOHANG) };
            }
        }
    }
    if listed {
        return;
    }
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value for waitid(2) to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        // SAFETY: waitid(2) peeking at any exited child, writing only into `info`.
        let peeked = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, flags) };
        // SAFETY: si_pid is set by waitid(2) when it returns 0 (0 if no child has exited).
        let pid = unsafe { info.si_pid() };
        if peeked != 0 || pid <= 0 || lock(&PROGRAMS).contains(&(pid as u32)) {
            break;
        }
        // SAFETY: as above: an exited child that is no program; writes only the status.
        unsafe { libc::waitpid(pid, &mut 0, libc::WNOHANG) };
    }
}

/// Reaps `child` if it has exited; what it leaves in its group is killed first, while the
/// group's id is still its own.
fn reap(child: &mut Child) -> io::Result<Option<ExitStatus>> {
    // SAFETY: an all-zero siginfo_t is a valid value for waitid(2) to fill in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: waitid(2) on our own child, writing only into `info`; WNOWAIT leaves the
    // child unreaped, for `try_wait` below.
    let peeked = unsafe { libc::waitid(libc::P_PID, child.id(), &mut info, flags) };
    // SAFETY: si_pid is set by waitid(2) when it returns 0 (0 if the child has not exited).
    if peeked == 0 && unsafe { info.si_pid() } != 0 {
        signal_group(child.id(), libc::SIGKILL);
    }
    // Held across the wait: the exit's kill (`at_exit`) never meets a group whose program
    // is being reaped.
    let mut programs = lock(&PROGRAMS);
    let reaped = child.try_wait();
    if let Ok(Some(_)) | Err(_) = reaped {
        programs.remove(&child.id());
    }
    reaped
}

/// Where `close_range(2)` is missing (before Linux 5.11) or refused (an older container
/// runtime's seccomp profile): close-on-exec for every descriptor from 3 on, one at a time,
/// as `/proc/self/fd` lists them. Trying every number up to the limit instead took 0.1 s a
/// program where the limit is 1,048,576 (Docker's default), on the one thread that starts
/// them all. Runs between fork and exec: no allocation, async-signal-safe calls only.
///
/// # Safety
/// Only in a child between fork and exec (it changes this process's descriptor flags).
unsafe fn close_on_exec_from_3() {
    // SAFETY: open(2) of a constant NUL-terminated path.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        // No /proc: every number up to the limit.
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit(2) and fcntl(2) write only `limit` and descriptor flags.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            for fd in 3..limit.rlim_cur.min(1 << 20) as i32 {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        return;
    }
    // `struct linux_dirent64` records: d_ino (8 bytes), d_off (8), d_reclen (2), d_type
    // (1), then the NUL-terminated name; 8-byte aligned, as the buffer is.
    let mut buf = [0u64; 512];
    loop {
        // SAFETY: getdents64(2) writes at most the buffer's size into it.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir,
                buf.as_mut_ptr(),
                std::mem::size_of_val(&buf),
            )
        };
        if n <= 0 {
            break;
        }
        let bytes = buf.as_ptr().cast::<u8>();
        let mut at = 0usize;
        while at < n as usize {
            // SAFETY: `at` is the start of a record the kernel wrote within the first `n`
            // bytes; its length and NUL-terminated name lie within the record.
            let (reclen, fd) = unsafe {
                let reclen = std::ptr::read_unaligned(bytes.add(at + 16).cast::<u16>());
                let mut name = bytes.add(at + 19);
                let mut fd: Option<i32> = Some(0);
                while *name != 0 {
                    fd = match (*name).checked_sub(b'0') {
                        Some(digit @ 0..=9) => fd
                            .and_then(|f| f.checked_mul(10))
                            .and_then(|f| f.checked_add(i32::from(digit))),
                        _ => None, // "." and ".."
                    };
                    name = name.add(1);
                }
                (usize::from(reclen), fd)
            };
            if let Some(fd) = fd.filter(|&fd| fd >= 3 && fd != dir) {
                // SAFETY: fcntl(2) setting a descriptor flag; no memory.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
            at += reclen.max(1);
        }
    }
    // SAFETY: close(2) of the directory opened above.
    unsafe { libc::close(dir) };
}

/// Makes a pipe end non-blocking, for the event loop.
fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, reading then setting its status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Program {
    /// Starts `argv` with `env` (and nothing else of the daemon's environment but what
    /// `env` holds) in the slot `reservation` holds, its pipes non-blocking.
    pub fn start(
        argv: &[String],
        env: Vec<(String, OsString)>,
        mut reservation: Reservation,
    ) -> io::Result<Program> {
        let client = reservation.client.take();
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .env_clear()
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A group of its own, which its signals go to (and out of the daemon's: a Ctrl-C
        // at the daemon's terminal is the daemon's to handle).
        command.process_group(0);
        // (std has emptied the signal mask before this runs.)
        // SAFETY: prctl, close_range, fcntl, open, getdents64, close and signal are
        // async-signal-safe, as code between fork and exec must be; they change only this
        // child's parent-death signal, descriptor flags and signal dispositions, and touch
        // no memory of the parent's.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // Every descriptor past the three pipes closes at exec (std's own
                // error-reporting pipe must stay open until then: not closed here).
                let all = libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                if all != 0 {
                    close_on_exec_from_3();
                }
                for signal in 1..=libc::SIGRTMAX() {
                    if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                        libc::signal(signal, libc::SIG_DFL);
                    }
                }
                Ok(())
            });
        }
        let (reply, started) = channel();
        starter()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Request::Start(Box::new(command), reservation, reply))
            .map_err(|_| io::Error::other("the program starter is gone"))?;
        let mut child = started
            .recv()
            .map_err(|_| io::Error::other("the program starter is gone"))??;
        let pid = child.id();
        // SAFETY: pidfd_open(2) with the pid of our unreaped child; it returns a new
        // descriptor we then own, or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if raw < 0 {
            let error = io::Error::last_os_error();
            end(child, client);
            return Err(error);
        }
        // SAFETY: a descriptor pidfd_open just gave us, owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        let (stdin, stdout, stderr) = (
            child.stdin.take().expect("piped"),
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        );
        // Made before anything else can fail: dropping it ends the program.
        let program = Program {
            child: Some(child),
            pid,
            stdin: Some(stdin),
            stdout,
            stderr,
            pidfd,
            exited: None,
            client,
        };
        for fd in program.fds() {
            set_nonblocking(&fd)?;
        }
        Ok(program)
    }

    fn fds(&self) -> impl Iterator<Item = std::os::fd::RawFd> + '_ {
        [
            self.stdout.as_raw_fd(),
            self.stderr.as_raw_fd(),
            self.pidfd.as_raw_fd(),
        ]
        .into_iter()
        .chain(self.stdin.as_ref().map(|s| s.as_raw_fd()))
    }

    /// The exit status, once the program has exited (reaping it).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Some(child) = self.child.as_mut() {
                let status = match reap(child) {
                    Ok(status) => status,
                    Err(e) => {
                        // Gone, reaped by someone else: no status to tell.
                        log::warn!("websocket: program (pid {}) lost: {e}", self.pid);
                        Some(std::os::unix::process::ExitStatusExt::from_raw(0xff00))
                    }
                };
                if let Some(status) = status {
                    release_slot();
                    self.child = None;
                    self.client = None;
                    self.exited = Some(status);
                }
            }
        }
        self.exited
    }
}

/// Hands a program to the starter thread to end (stdin is closed as the caller drops it);
/// its client's share is given back when it is reaped.
fn end(child: Child, share: Option<ClientShare>) {
    ENDING.fetch_add(1, Ordering::AcqRel);
    let sent = starter()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(Request::End(child, share));
    if sent.is_err() {
        ENDING.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.stdin = None; // closed first: the program sees its end of input
        if let Some(child) = self.child.take() {
            end(child, self.client.take());
        }
    }
}

/// Taken by every unit test that starts programs: they count in the process's
/// [`RUNNING`], which one of them checks exactly.
#[cfg(test)]
pub static TEST_PROGRAMS: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    /// The fallback for `close_range(2)`: every descriptor from 3 on gets close-on-exec
    /// (in a forked child, whose descriptors alone it changes), 0 to 2 keep theirs.
    #[test]
    fn close_on_exec_from_3_marks_every_descriptor_past_the_three() {
        // SAFETY: fork(2); the child makes only async-signal-safe calls (open, fcntl,
        // getdents64, close, _exit) and ends with _exit, touching no state of the parent's.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", io::Error::last_os_error());
        if child == 0 {
            // SAFETY: as above, in the child.
            unsafe {
                let mut opened = [-1; 40];
                for fd in opened.iter_mut() {
                    *fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                }
                // A high one too, past a gap (under the usual soft limit of 1,024).
                let high = libc::fcntl(opened[0], libc::F_DUPFD, 1000);
                libc::fcntl(2, libc::F_SETFD, 0);
                close_on_exec_from_3();
                let marked = |fd: i32| libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0;
                let all = opened.iter().all(|&fd| fd >= 3 && marked(fd));
                libc::_exit(match all && high >= 1000 && marked(high) && !marked(2) {
                    true => 0,
                    false => 1,
                });
            }
        }
        let mut status = 0;
        // SAFETY: waitpid(2) on our own child, writing `status`.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "a descriptor without close-on-exec (status {status})"
        );
    }

    /// Waits (a few seconds at most) for `running()` to be `n`.
    fn running_becomes(n: usize) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if running() == n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// The slots under the processes limit: taken before the spawn, given back by a spawn
    /// that fails, held by a program until it is reaped. (One test, as RUNNING is the
    /// process's.)
    #[test]
    fn a_slot_is_taken_before_the_spawn_and_given_back_when_the_program_is_reaped() {
        let _alone = TEST_PROGRAMS.lock().unwrap_or_else(|e| e.into_inner());
        // Another test's programs may not all be reaped yet.
        assert!(running_becomes(0), "{} running before", running());
        let first = Reservation::take(2).unwrap();
        let second = Reservation::take(2).unwrap();
        assert!(
            Reservation::take(2).is_none(),
            "the limit holds before any spawn"
        );
        drop(second);
        assert_eq!(running(), 1);

        // A program that cannot be started gives its slot back.
        let failed = Program::start(&["/no/such/program".into()], Vec::new(), first);
        assert!(failed.is_err());
        assert_eq!(running(), 0);

        // A started program holds its slot until it has exited and been reaped.
        let slot = Reservation::take(1).unwrap();
        let env = vec![("PATH".to_string(), OsString::from("/usr/bin:/bin"))];
        let mut cat = Program::start(&["cat".into()], env, slot).unwrap();
        assert_eq!(running(), 1);
        assert!(Reservation::take(1).is_none());
        assert_eq!(cat.exit_status(), None, "cat waits for its input");
        // Dropped: stdin closed, cat ends by itself; the starter thread reaps it.
        drop(cat);
        assert!(running_becomes(0), "reaped: {} still counted", running());
        assert!(Reservation::take(1).is_some());
    }
}
