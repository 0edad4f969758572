//! A route's service: a socket dialled, or a program started, before the `101` (on a worker
//! thread: negotiate asks for one, since both block), then relayed non-blocking on the
//! event loop, which watches its descriptors.

use crate::process::{Program, Reservation};
use crate::routes::Service;
use std::ffi::OsString;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// A connected service.
pub enum Backend {
    Tcp(TcpStream),
    Unix(UnixStream),
    Program(Box<Program>),
}

/// Why a service could not be reached: the status for the client, and what to log.
pub struct Unreachable {
    pub status: u16,
    pub why: String,
}

impl Backend {
    /// Dials `service` (not `Echo`), waiting at most `timeout` for a connection: refused or
    /// unreachable is `502`, too slow `504`. A program is started with `env` in the slot
    /// `program` reserved for it.
    pub fn dial(
        service: &Service,
        timeout: Duration,
        program: Option<Reservation>,
        env: impl FnOnce() -> Vec<(String, OsString)>,
    ) -> Result<Backend, Unreachable> {
        let failed = |e: io::Error| {
            let (status, what) = match e.kind() {
                ErrorKind::TimedOut | ErrorKind::WouldBlock => (504, "did not answer in time"),
                ErrorKind::ConnectionRefused => (502, "refused the connection"),
                _ => (502, "could not be reached"),
            };
            Unreachable {
                status,
                why: format!("{what}: {e}"),
            }
        };
        match service {
            Service::Tcp(address) => {
                let mut last = io::Error::new(ErrorKind::NotFound, "no address");
                for addr in address.to_socket_addrs().map_err(failed)? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(stream) => {
                            let _ = stream.set_nodelay(true);
                            return Ok(Backend::Tcp(stream));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(failed(last))
            }
            Service::Unix(path) => connect_unix(path, timeout)
                .map(Backend::Unix)
                .map_err(failed),
            Service::Exec { argv, .. } => {
                let Some(reservation) = program else {
                    return Err(Unreachable {
                        status: 500,
                        why: "no program slot was reserved".into(),
                    });
                };
                Program::start(argv, env(), reservation)
                    .map(|p| Backend::Program(Box::new(p)))
                    .map_err(|e| Unreachable {
                        status: 502,
                        why: format!("could not be started: {e}"),
                    })
            }
            // Resolved per request before they are dialled (to a program, a service).
            Service::Echo
            | Service::Tokens(_)
            | Service::Shared { .. }
            | Service::ExecDir { .. } => Err(Unreachable {
                status: 500,
                why: "echo has no backend".into(),
            }),
        }
    }

    pub fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Backend::Tcp(s) => s.set_nonblocking(true),
            Backend::Unix(s) => s.set_nonblocking(true),
            Backend::Program(_) => Ok(()), // its pipes are already
        }
    }

    /// The descriptors the event loop watches for this service.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        match self {
            Backend::Tcp(s) => vec![s.as_fd()],
            Backend::Unix(s) => vec![s.as_fd()],
            Backend::Program(p) => {
                let mut fds = vec![p.stdout.as_fd(), p.stderr.as_fd(), p.pidfd.as_fd()];
                fds.extend(p.stdin.as_ref().map(|s| s.as_fd()));
                fds
            }
        }
    }

    /// The descriptor that `shutdown_write` closes (a program's stdin), which must be
    /// unwatched first.
    pub fn closed_by_shutdown(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Backend::Program(p) => p.stdin.as_ref().map(|s| s.as_fd()),
            _ => None,
        }
    }

    /// Our side is done sending: the service sees its end of input.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Backend::Tcp(s) => s.shutdown(Shutdown::Write),
            Backend::Unix(s) => s.shutdown(Shutdown::Write),
            Backend::Program(p) => {
                p.stdin = None;
                Ok(())
            }
        }
    }

    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Backend::Tcp(s) => s.read(buf),
            Backend::Unix(s) => s.read(buf),
            Backend::Program(p) => p.stdout.read(buf),
        }
    }
}

/// The service's input: its socket, or the program's stdin.
impl Write for Backend {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Backend::Tcp(s) => s.write(buf),
            Backend::Unix(s) => s.write(buf),
            Backend::Program(p) => match p.stdin.as_mut() {
                Some(stdin) => stdin.write(buf),
                None => Err(ErrorKind::BrokenPipe.into()),
            },
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // nothing is buffered here
    }
}

/// Connects to a Unix socket service within `timeout`. Such a connect completes at once or
/// fails at once, but for one case: the service's listen queue is full, where a blocking
/// connect would wait for as long as the service takes (`EAGAIN` when non-blocking); so it
/// is tried again every few milliseconds until the time-out.
fn connect_unix(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    const RETRY: Duration = Duration::from_millis(5);
    let deadline = Instant::now() + timeout;
    let address = SockAddr::unix(path)?;
    loop {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        match socket.connect(&address) {
            Ok(()) => {
                socket.set_nonblocking(false)?;
                return Ok(UnixStream::from(std::os::fd::OwnedFd::from(socket)));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() + RETRY < deadline => {
                std::thread::sleep(RETRY);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    "its listen queue stayed full",
                ))
            }
            Err(e) => return Err(e),
        }
    }
}
