//! Helpers: build the daemon and plugins once, start the daemon on 127.0.0.1:0 with a
//! temporary plugin folder, and talk HTTP/1.1 to it over real sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Packages the tests run from the main workspace: the daemon and the reference plugins.
const PACKAGES: &[&str] = &[
    "switchyard",
    "switchyard-echo",
    "switchyard-websocket",
    "switchyard-tunnel",
    "switchyard-h2c",
];

/// Where the suite's builds are: the daemon and reference plugins, and the test plugins
/// (the fixtures and the C plugins) apart from them.
struct Built {
    main: PathBuf,
    fixtures: PathBuf,
}

/// Builds the daemon, the reference plugins and the fixtures (a workspace of their own,
/// `tests/fixtures`) once per test run.
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let root = target_of_this_binary()
            .or_else(|| {
                let dir = PathBuf::from(std::env::var_os("CARGO_TARGET_DIR")?);
                dir.is_absolute().then_some(dir)
            })
            .unwrap_or_else(|| workspace.join("target"));
        // The daemon and plugins go where this test binary was built, so the dependencies
        // the outer `cargo test` just compiled serve again (a folder of their own cost CI a
        // minute for a second debug build of the same crates); a cargo that holds that
        // folder's lock while tests run (older ones did) has them built in `it` instead.
        let main = run_build(cargo_build(workspace, &root, false), true).unwrap_or_else(|| {
            run_build(cargo_build(workspace, &root.join("it"), false), false)
                .expect("a build that waits for its lock ends")
        });
        // The test plugins never beside the daemon: a debug daemon's default plugin folder
        // is its own, and these include one that relays to any address a client names.
        let fixtures = run_build(
            cargo_build(workspace, &root.join("it-fixtures"), true),
            false,
        )
        .expect("a build that waits for its lock ends");
        Built { main, fixtures }
    })
}

/// The folder holding the daemon and the reference plugins, built for this test run.
pub fn artifacts() -> &'static Path {
    &built().main
}

/// The target folder of this test binary, `<target>/debug/deps/it-<hash>`, or
/// `<target>/<triple>/debug/deps/it-<hash>` under a `build.target` setting: the one that
/// holds cargo's `.rustc_info.json` (cargo tags both with a `CACHEDIR.TAG`). A wrong guess
/// costs a build of its own, not a wrong daemon: [`run_build`] reads where cargo wrote.
fn target_of_this_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    (deps.file_name()? == "deps").then_some(())?;
    let profile = deps.parent()?;
    let mut above = profile.ancestors().skip(1).take(2);
    let first = above.clone().next()?;
    Some(
        above
            .find(|dir| dir.join(".rustc_info.json").is_file())
            .unwrap_or(first)
            .to_path_buf(),
    )
}

/// `cargo build` into `target`: of the main workspace's [`PACKAGES`], or of the fixtures'
/// workspace. Cargo's messages are JSON, so that [`run_build`] learns where the libraries
/// and the daemon were written whatever the configuration (a `build.target` puts them
/// under `<target>/<triple>/debug`).
fn cargo_build(workspace: &Path, target: &Path, fixtures: bool) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace).arg("build");
    match fixtures {
        true => command
            .args(["--workspace", "--manifest-path"])
            .arg(workspace.join("tests/fixtures/Cargo.toml")),
        false => command.args(PACKAGES.iter().flat_map(|package| ["-p", package])),
    };
    command
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--target-dir",
        ])
        .arg(target);
    command
}

/// Runs a build and returns the folder its libraries (and the daemon) were written to;
/// with `give_up_on_lock`, `None` as soon as cargo says it waits for the target folder's
/// lock (cargo is let go of, nothing was built).
fn run_build(mut command: Command, give_up_on_lock: bool) -> Option<PathBuf> {
    // Not quiet, whatever the user's configuration: cargo says it waits for a lock only as
    // a status line.
    let mut child = command
        .env("CARGO_TERM_QUIET", "false")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cargo build");
    let stdout = child.stdout.take().unwrap();
    let messages = std::thread::spawn(move || artifact_folders(stdout));
    let mut said = String::new();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = Vec::new();
    while stderr
        .read_until(b'\n', &mut line)
        .expect("read cargo's output")
        > 0
    {
        let text = String::from_utf8_lossy(&line);
        if give_up_on_lock
            && text.contains("Blocking waiting for file lock")
            && !text.contains("package cache")
        {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        said.push_str(&text);
        line.clear();
    }
    let status = child.wait().expect("wait for cargo build");
    assert!(status.success(), "cargo build failed:\n{said}");
    let folders = messages.join().expect("read cargo's messages");
    assert!(
        folders.len() == 1,
        "cargo wrote the libraries to {folders:?}, not to one folder:\n{said}"
    );
    folders.into_iter().next()
}

/// The folders cargo's JSON messages (`compiler-artifact`) name for the plugins (shared
/// libraries) and the daemon it built or found fresh.
fn artifact_folders(stdout: impl Read) -> std::collections::BTreeSet<PathBuf> {
    let mut folders = std::collections::BTreeSet::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(message) =
            serde_json::from_str::<serde_json::Value>(&line.expect("cargo's messages"))
        else {
            continue;
        };
        let kinds = message["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let wanted = |kind: &str| kinds.iter().any(|k| k == kind);
        if message["reason"] != "compiler-artifact" || !(wanted("bin") || wanted("cdylib")) {
            continue; // dependencies, build scripts, procedural macros
        }
        let executable = message["executable"].as_str();
        let libraries = (message["filenames"].as_array().into_iter().flatten())
            .filter_map(|name| name.as_str())
            .filter(|name| name.ends_with(".so"));
        for file in executable.into_iter().chain(libraries) {
            folders.insert(Path::new(file).parent().unwrap().to_path_buf());
        }
    }
    folders
}

/// Compiles `tests/c/echo_plugin.c` with the system's C compiler and `defines` (misuse
/// variants), once per variant for the whole test run (tests run at once would otherwise
/// write one file while another copies it); returns the library.
pub fn c_plugin(defines: &[&str]) -> PathBuf {
    c_library("echo_plugin.c", "c_echo", defines)
}

/// `tests/c/evented_plugin.c` (a readiness plugin in C), as [`c_plugin`] builds its echo.
pub fn c_evented_plugin(defines: &[&str]) -> PathBuf {
    c_library("evented_plugin.c", "c_evented", defines)
}

fn c_library(source: &str, stem: &str, defines: &[&str]) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let name = if defines.is_empty() {
        format!("lib{stem}.so")
    } else {
        format!("lib{stem}_{}.so", defines.join("_").to_ascii_lowercase())
    };
    let mut compiled = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = compiled.iter().find(|(n, _)| *n == name) {
        return path.clone();
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = built().fixtures.join("c").join(&name);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut command = Command::new(compiler);
    command
        .args([
            "-shared", "-fPIC", "-std=c11", "-Wall", "-Wextra", "-Werror", "-I",
        ])
        .arg(workspace.join("protocol-api/include"))
        .arg(workspace.join("tests/c").join(source))
        .arg("-o")
        .arg(&out);
    for define in defines {
        command.arg(format!("-D{define}"));
    }
    let output = command.output().expect("a C compiler (cc)");
    assert!(
        output.status.success(),
        "{source} does not compile:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    compiled.push((name, out.clone()));
    out
}

/// The library file of a package (`switchyard-echo` → `libswitchyard_echo.so`).
pub fn library(package: &str) -> PathBuf {
    let name = package.replace('-', "_");
    let folder = match package.starts_with("fixture-") {
        true => &built().fixtures,
        false => &built().main,
    };
    folder.join(format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

pub struct DaemonBuilder {
    plugins: tempfile::TempDir,
    env: Vec<(String, String)>,
    /// Run a copy of the daemon placed in the plugin folder, with no SWITCHYARD_PLUGIN_DIR.
    beside_plugins: bool,
    /// Run the daemon as PID 1 of a PID namespace of its own (`unshare`).
    as_pid_1: bool,
}

impl DaemonBuilder {
    /// Copies `package`'s library into the plugin folder.
    pub fn plugin(self, package: &str) -> Self {
        let source = library(package);
        let name = source.file_name().unwrap().to_owned();
        std::fs::copy(&source, self.plugins.path().join(name)).expect("copy plugin");
        self
    }

    /// Copies `package`'s library into the plugin folder as `file`.
    pub fn plugin_as(self, package: &str, file: &str) -> Self {
        std::fs::copy(library(package), self.plugins.path().join(file)).expect("copy plugin");
        self
    }

    /// Copies the library at `path` into the plugin folder.
    pub fn library_file(self, path: &Path) -> Self {
        let name = path.file_name().unwrap();
        std::fs::copy(path, self.plugins.path().join(name)).expect("copy library");
        self
    }

    /// Writes a file into the plugin folder.
    pub fn file(self, name: &str, contents: &[u8]) -> Self {
        std::fs::write(self.plugins.path().join(name), contents).expect("write file");
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn plugin_dir(&self) -> &Path {
        self.plugins.path()
    }

    /// Runs a copy of the daemon's executable placed among the plugins, without
    /// SWITCHYARD_PLUGIN_DIR: the default plugin folder is the executable's.
    pub fn beside_plugins(mut self) -> Self {
        let copy = self.plugins.path().join("switchyard");
        std::fs::copy(artifacts().join("switchyard"), copy).expect("copy the daemon");
        self.beside_plugins = true;
        self
    }

    /// Runs the daemon as PID 1 of a PID namespace of its own, as in a container with no
    /// init (util-linux `unshare`, as root; the daemon's own pid is then the one child of
    /// [`Daemon::pid`]).
    pub fn pid_1_of_its_own(mut self) -> Self {
        self.as_pid_1 = true;
        self
    }

    pub fn command(&self) -> Command {
        let daemon = match self.beside_plugins {
            true => self.plugins.path().join("switchyard"),
            false => artifacts().join("switchyard"),
        };
        let mut command = match self.as_pid_1 {
            true => {
                let mut unshare = Command::new("/usr/bin/unshare");
                unshare.args(["--pid", "--fork", "--mount-proc", "--kill-child"]);
                unshare.arg(daemon);
                unshare
            }
            false => Command::new(daemon),
        };
        command.env_clear();
        if !self.beside_plugins {
            command.env("SWITCHYARD_PLUGIN_DIR", self.plugins.path());
        }
        command
            .env("SWITCHYARD_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// Spawns [`Self::command`]. A daemon copied beside its plugins ([`Self::beside_plugins`])
    /// may meet `ETXTBSY` ("text file busy"): a child another test forked while the copy
    /// was open for writing holds that descriptor until it execs (tests run eight at a
    /// time). It is spawned again then, for up to a second.
    fn spawn(&self) -> std::process::Child {
        let mut tries = 0;
        loop {
            match self.command().spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                spawned => return spawned.expect("start switchyard"),
            }
        }
    }

    /// Lets `prepare` change the plugin folder, then starts the daemon.
    pub fn start_with(self, prepare: impl FnOnce(&Path)) -> Daemon {
        prepare(self.plugins.path());
        self.start()
    }

    /// Starts the daemon and waits until it listens.
    pub fn start(self) -> Daemon {
        let mut child = self.spawn();
        let logs = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        let logs_ended = Arc::new(AtomicBool::new(false));
        let ended = logs_ended.clone();
        std::thread::spawn(move || {
            let _ended = SetOnDrop(ended);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    // Up to what cannot be in an address (a JSON line's closing quote).
                    let addr = addr
                        .split(|c: char| !(c.is_ascii_hexdigit() || ".:[]".contains(c)))
                        .next()
                        .unwrap_or_default();
                    let _ = ready_tx.send(addr.to_string());
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .ok()
            .and_then(|addr| addr.parse().ok());
        let Some(addr) = addr else {
            // Never leave a daemon running behind a failed test.
            let _ = child.kill();
            let _ = child.wait();
            panic!("switchyard did not start:\n{}", logs.lock().unwrap());
        };
        Daemon {
            child,
            addr,
            logs,
            logs_ended,
            plugins: self.plugins,
        }
    }

    /// Runs the daemon with command-line `args` to its end; returns its status, what it
    /// printed, and its log.
    pub fn run_with_args(self, args: &[&str]) -> (ExitStatus, String, String) {
        let output = self
            .command()
            .args(args)
            .stdout(Stdio::piped())
            .output()
            .expect("run switchyard");
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Runs the daemon expecting it to refuse to start; returns its status and logs.
    pub fn run_to_exit(self) -> (ExitStatus, String) {
        let mut child = self.spawn();
        let mut logs = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut logs)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, logs);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("switchyard kept running:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
    /// The daemon's stderr reached its end and every line of it is in `logs`.
    logs_ended: Arc<AtomicBool>,
    plugins: tempfile::TempDir,
}

/// Sets its flag when dropped: when the thread holding it ends, however it ends.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Daemon {
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder {
            plugins: tempfile::tempdir().expect("temp dir"),
            env: Vec::new(),
            beside_plugins: false,
            as_pid_1: false,
        }
    }

    /// A daemon with the echo and probe plugins.
    pub fn start() -> Daemon {
        Daemon::builder()
            .plugin("switchyard-echo")
            .plugin("fixture-probe")
            .start()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// The daemon's plugin folder.
    pub fn plugin_dir(&self) -> &Path {
        self.plugins.path()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until the logs contain `needle`; returns the logs either way for the message.
    pub fn wait_for_log(&self, needle: &str) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return Ok(logs);
            }
            if Instant::now() > deadline {
                return Err(logs);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon's resident memory, from `/proc`.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The most memory the daemon has held at once (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    /// CPU time the daemon has used (user and system), from the kernel's count.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("read /proc stat");
        // The fields after the command's closing parenthesis; utime and stime are the
        // 14th and 15th of the line (12th and 13th after it), in clock ticks.
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<u64> = after
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // SAFETY: sysconf only reads a system setting.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis((fields[11] + fields[12]) * 1000 / ticks)
    }

    /// A client connected from `local` (any 127.0.0.0/8 address is this machine's), so that
    /// tests can be several client addresses.
    pub fn client_from(&self, local: &str) -> Client {
        self.client_from_with(local, |_| {})
    }

    /// A connection from the local address `local`, its socket set up by `setup` before it
    /// connects (a receive buffer set then is the window the handshake announces).
    pub fn client_from_with(&self, local: &str, setup: impl FnOnce(&socket2::Socket)) -> Client {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        setup(&socket);
        let local: SocketAddr = format!("{local}:0").parse().expect("an address");
        socket
            .bind(&local.into())
            .expect("bind the client's address");
        socket.connect(&self.addr.into()).expect("connect");
        let stream = TcpStream::from(socket);
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            stream,
            buffer: Vec::new(),
            reset: false,
        }
    }

    /// `GET /metrics`, on a connection of its own.
    pub fn metrics(&self) -> String {
        let mut client = self.client();
        client.send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        client.response().body_text()
    }

    /// Waits until `/metrics` has the line `line` (it is rendered at most once a second).
    pub fn wait_for_metric(&self, line: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.metrics();
            if text.lines().any(|l| l == line) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(text);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, signal: i32) {
        send_signal(self.child.id(), signal);
    }

    /// Waits up to `limit` for the daemon to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The last lines may still be on their way from the pipe to `logs`
                // (stderr ends when the daemon and whatever it started have closed it).
                let read_by = Instant::now() + Duration::from_secs(5);
                while !self.logs_ended.load(Ordering::Acquire) && Instant::now() < read_by {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection that keeps bytes read past a response for what comes next.
pub struct Client {
    pub stream: TcpStream,
    buffer: Vec<u8>,
    /// The server reset the connection (rather than closing it).
    reset: bool,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            stream,
            buffer: Vec::new(),
            reset: false,
        }
    }

    pub fn send(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        self.stream.write_all(bytes.as_ref()).expect("send");
        self
    }

    /// Sends, ignoring errors (the server may have closed already).
    pub fn try_send(&mut self, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
        self.stream.write_all(bytes.as_ref())
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                self.reset = true;
                0
            }
            Err(e) => panic!(
                "read failed: {e} (have {:?})",
                String::from_utf8_lossy(&self.buffer)
            ),
        }
    }

    /// Reads one response; `1xx` and `101` have no body, others carry `Content-Length`.
    pub fn response(&mut self) -> Response {
        self.read_response(false)
    }

    /// Reads the answer to a `HEAD` request: a head only, whatever `Content-Length` says.
    pub fn response_head_only(&mut self) -> Response {
        self.read_response(true)
    }

    fn read_response(&mut self, head_only: bool) -> Response {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) =
                parsed.parse(&self.buffer).expect("valid response")
            {
                let status = parsed.code.unwrap();
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let length = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
                let length = if status < 200 || head_only { 0 } else { length };
                while self.buffer.len() < len + length {
                    assert!(self.fill() > 0, "connection closed inside a response body");
                }
                let body = self.buffer[len..len + length].to_vec();
                self.buffer.drain(..len + length);
                return Response {
                    status,
                    headers,
                    body,
                };
            }
            assert!(
                self.fill() > 0,
                "connection closed before a response: {:?}",
                String::from_utf8_lossy(&self.buffer)
            );
        }
    }

    /// The bytes read past the last response and not taken yet: what a test reading
    /// `stream` itself must count first (a `101` and the first bytes after it may come in
    /// one read).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buffer)
    }

    /// Reads exactly `n` bytes.
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buffer.len() < n {
            assert!(
                self.fill() > 0,
                "connection closed after {:?}",
                String::from_utf8_lossy(&self.buffer)
            );
        }
        self.buffer.drain(..n).collect()
    }

    /// Reads exactly `n` bytes, showing the daemon's log if the connection ends first.
    pub fn read_exact_or_logs(&mut self, n: usize, daemon: &Daemon) -> Vec<u8> {
        while self.buffer.len() < n {
            assert!(
                self.fill() > 0,
                "connection closed after {:?}:\n{}",
                String::from_utf8_lossy(&self.buffer),
                daemon.logs()
            );
        }
        self.buffer.drain(..n).collect()
    }

    /// Reads one line, without its `\n`.
    pub fn read_line(&mut self) -> String {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return String::from_utf8_lossy(&line[..end]).into_owned();
            }
            assert!(
                self.fill() > 0,
                "connection closed before a line: {:?}",
                String::from_utf8_lossy(&self.buffer)
            );
        }
    }

    /// Reads until the server closes, cleanly (a reset fails the test); returns what came.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let (rest, reset) = self.read_to_end_or_reset();
        assert!(
            !reset,
            "the connection was reset, not closed (after {:?})",
            String::from_utf8_lossy(&rest)
        );
        rest
    }

    /// Reads until the server closes or resets the connection; returns what came, and
    /// whether it was a reset.
    pub fn read_to_end_or_reset(&mut self) -> (Vec<u8>, bool) {
        while self.fill() > 0 {}
        (std::mem::take(&mut self.buffer), self.reset)
    }

    /// Writes 64 KiB chunks, never reading, until the server ends the connection; fails
    /// the test if that takes longer than `limit`. Returns how long it took.
    pub fn write_until_dropped(&mut self, limit: Duration) -> Duration {
        self.stream.set_nonblocking(true).unwrap();
        let chunk = [b'x'; 64 * 1024];
        let began = Instant::now();
        loop {
            match self.stream.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(_) => return began.elapsed(),
            }
            assert!(
                began.elapsed() < limit,
                "the connection was not dropped within {limit:?}"
            );
        }
    }

    pub fn shutdown_write(&mut self) {
        self.stream.shutdown(Shutdown::Write).unwrap();
    }

    /// Waits until the daemon has read every byte sent on this connection so far (its
    /// socket's receive queue, as /proc/net/tcp shows it, is empty), so that what is sent
    /// next comes to it in a read of its own: how to send something in pieces that a
    /// loaded machine cannot merge (a sleep between the pieces can be too short).
    pub fn wait_until_read(&self) {
        let (ours, theirs) = (
            self.stream.local_addr().unwrap(),
            self.stream.peer_addr().unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The daemon's end: from theirs to ours.
            let queued = kernel_queues(theirs, ours).map(|q| q.unread);
            if queued == Some(0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not read what was sent (queue {queued:?})"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// What the kernel holds for one end of a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queues {
    /// Bytes written and not yet acknowledged by the peer (sent or not).
    pub unacked: u64,
    /// Bytes received and not yet read.
    pub unread: u64,
}

/// The queues of the IPv4 TCP socket from `local` to `remote` on this machine (any
/// process's), as /proc/net/tcp shows them; `None` when there is no such socket.
pub fn kernel_queues(local: SocketAddr, remote: SocketAddr) -> Option<Queues> {
    let hex = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => panic!("IPv4 only"),
    };
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().find_map(|line| {
        // "sl local remote st tx:rx ...", addresses and queues in hex.
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() <= 4 || fields[1] != local || fields[2] != remote {
            return None;
        }
        let (tx, rx) = fields[4].split_once(':')?;
        Some(Queues {
            unacked: u64::from_str_radix(tx, 16).ok()?,
            unread: u64::from_str_radix(rx, 16).ok()?,
        })
    })
}

/// Sends `signal` to process `pid` (a child of this test).
pub fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a child's pid; no memory is involved.
    let rc = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(rc, 0, "kill failed");
}

/// Raises this process's open-file limit to its hard limit, for tests that hold thousands
/// of connections; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, correctly sized struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
    }
    limit.rlim_cur
}

/// An upgrade request for `protocols` on `target`.
pub fn upgrade_request(target: &str, protocols: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: {protocols}\r\n\r\n")
}

/// A TCP listener nobody can connect to in time: its accept queue is full, so new SYNs are
/// dropped and a connect times out. Checked, not assumed: connections are added until one
/// of ours times out. Keep the returned values alive as long as the address must stay so.
pub fn listener_never_answering() -> (socket2::Socket, SocketAddr, Vec<TcpStream>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    let full =
        (0..16).any(
            |_| match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(stream) => {
                    fillers.push(stream);
                    false
                }
                Err(e) => matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ),
            },
        );
    assert!(
        full,
        "the listen queue never filled ({} connections)",
        fillers.len()
    );
    (socket, addr, fillers)
}

/// A TCP backend on 127.0.0.1 that accepts one connection (20 s read time-out) and runs
/// `serve` on it; its address and thread.
pub fn one_connection_backend(
    serve: impl FnOnce(TcpStream) + Send + 'static,
) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        serve(stream)
    });
    (addr, handle)
}

/// Sends `request` (an upgrade whose dial will not be answered) twice from one client
/// address: once the first dial shows in `in_flight` (a metric line), the second must get
/// `503` with `busy` as its body; then the first its `504`.
pub fn second_dial_is_refused(daemon: &Daemon, request: &str, in_flight: &str, busy: &str) {
    let mut first = daemon.client();
    first.send(request);
    daemon.wait_for_metric(in_flight).unwrap();
    let mut second = daemon.client();
    second.send(request);
    let response = second.response();
    assert_eq!(response.status, 503);
    assert_eq!(response.body_text(), busy);
    assert_eq!(first.response().status, 504);
}

/// Starts another program's server (HAProxy, nginx) on a port free a moment ago:
/// `command` writes its configuration for the address and returns the command to run; if
/// the program exits (the port was taken meanwhile), another port is tried. The child and
/// its address once it accepts connections; `None` if it never did. `package` names what
/// to install when the program is missing.
pub fn spawn_on_free_port(
    package: &str,
    mut command: impl FnMut(SocketAddr) -> Command,
) -> Option<(Child, SocketAddr)> {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut child = command(addr)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}: {package} (.ci/run installs it)"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if TcpStream::connect(addr).is_ok() {
                return Some((child, addr));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}
