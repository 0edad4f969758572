//! The soak run's driver (see tests/soak/run.sh).
//!
//! ```text
//! soak tcp-echo | http1 | stuck              a backend; prints `listening PORT`
//! soak run ADDR PID SECONDS IDLE CSV         every client at once against the daemon
//! ```
//!
//! `run` samples the daemon (RSS, descriptors, threads) and its own counters every 10 s
//! into CSV, then judges: no error a client did not cause, and no growth past warm-up.

mod backends;
mod clients;

use clients::{Counters, Env};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

const SAMPLE_EVERY: Duration = Duration::from_secs(10);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("tcp-echo") => backends::tcp_echo(),
        Some("http1") => backends::http1(),
        Some("stuck") => backends::stuck(),
        Some("run") if args.len() == 7 => {
            let addr: SocketAddr = args[2].parse().expect("ADDR");
            let pid: i32 = args[3].parse().expect("PID");
            let seconds: u64 = args[4].parse().expect("SECONDS");
            let idle: usize = args[5].parse().expect("IDLE");
            let passed = run(addr, pid, Duration::from_secs(seconds), idle, &args[6]);
            std::process::exit(if passed { 0 } else { 1 });
        }
        _ => {
            eprintln!("usage: soak tcp-echo | http1 | stuck | run ADDR PID SECONDS IDLE CSV");
            std::process::exit(2);
        }
    }
}

/// One row of the CSV.
#[derive(Clone, Copy, Debug)]
struct Sample {
    seconds: u64,
    rss_kib: u64,
    fds: u64,
    threads: u64,
}

fn proc_status(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn sample(pid: i32, seconds: u64) -> Sample {
    Sample {
        seconds,
        rss_kib: proc_status(pid, "VmRSS:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
        threads: proc_status(pid, "Threads:"),
    }
}

/// The daemon's own count of `name` (summed over labels), from `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}

fn run(addr: SocketAddr, pid: i32, length: Duration, idle: usize, csv: &str) -> bool {
    let stop = AtomicBool::new(false);
    let counters = Counters::default();
    let env = Env {
        addr,
        stop: &stop,
        counters: &counters,
    };
    let mut out = std::fs::File::create(csv).expect("create the CSV");
    writeln!(
        out,
        "seconds,rss_kib,fds,threads,idle_open,echo_messages,churn_connections,tunnel_mib,\
         h2c_requests,malformed_answered,panics_provoked,reloads,hostile_rounds,errors"
    )
    .unwrap();
    let mut samples = Vec::new();
    std::thread::scope(|scope| {
        let env = &env;
        scope.spawn(move || clients::idle(env, idle));
        for seed in 1..=4 {
            scope.spawn(move || clients::echo(env, seed * 7919));
        }
        for _ in 0..2 {
            scope.spawn(move || clients::churn(env));
        }
        scope.spawn(move || clients::tunnel(env, 104_729));
        scope.spawn(move || clients::malformed(env));
        scope.spawn(move || clients::panics(env));
        scope.spawn(move || clients::h2c(env));
        scope.spawn(move || clients::reloads(env, pid));
        scope.spawn(move || clients::hostile(env));

        let began = Instant::now();
        let mut next = began + SAMPLE_EVERY;
        while began.elapsed() < length {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next += SAMPLE_EVERY;
            let s = sample(pid, began.elapsed().as_secs());
            if s.rss_kib == 0 {
                counters.error("the daemon is gone".into());
                break;
            }
            let c = &counters;
            writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                s.seconds,
                s.rss_kib,
                s.fds,
                s.threads,
                c.idle_open.load(Relaxed),
                c.echo_messages.load(Relaxed),
                c.churn_connections.load(Relaxed),
                c.tunnel_bytes.load(Relaxed) >> 20,
                c.h2c_requests.load(Relaxed),
                c.malformed_answered.load(Relaxed),
                c.panics_provoked.load(Relaxed),
                c.reloads.load(Relaxed),
                c.hostile_rounds.load(Relaxed),
                c.errors.load(Relaxed),
            )
            .unwrap();
            out.flush().unwrap();
            println!(
                "{:>5} s  rss {:>7} KiB  fds {:>6}  threads {:>4}  idle {:>5}  echo {:>9}  churn {:>7}  errors {}",
                s.seconds,
                s.rss_kib,
                s.fds,
                s.threads,
                c.idle_open.load(Relaxed),
                c.echo_messages.load(Relaxed),
                c.churn_connections.load(Relaxed),
                c.errors.load(Relaxed)
            );
            samples.push(s);
        }
        stop.store(true, Relaxed);
    });
    judge(addr, &samples, &counters, idle)
}

/// The verdict: every client's work checked, the daemon's counts agreeing, and nothing
/// growing after warm-up (the first fifth of the run, at least 20 s: connections opening,
/// buffers and pools reaching their working size).
fn judge(addr: SocketAddr, samples: &[Sample], counters: &Counters, idle: usize) -> bool {
    let mut failures: Vec<String> = counters.error_lines.lock().unwrap().clone();
    let errors = counters.errors.load(Relaxed);
    if errors > failures.len() as u64 {
        failures.push(format!("... {errors} errors in all"));
    }
    let open = counters.idle_open.load(Relaxed) as usize;
    if open != idle {
        failures.push(format!("{open} of {idle} idle WebSockets open at the end"));
    }
    for (what, count) in [
        ("echo messages", counters.echo_messages.load(Relaxed)),
        (
            "churn connections",
            counters.churn_connections.load(Relaxed),
        ),
        ("tunnel bytes", counters.tunnel_bytes.load(Relaxed)),
        (
            "malformed requests answered",
            counters.malformed_answered.load(Relaxed),
        ),
        (
            "plugin panics provoked",
            counters.panics_provoked.load(Relaxed),
        ),
        ("hostile rounds", counters.hostile_rounds.load(Relaxed)),
    ] {
        if count == 0 {
            failures.push(format!("no {what}: that load did not run"));
        }
    }
    // The daemon counted every panic we caused, and no other.
    let provoked = counters.panics_provoked.load(Relaxed);
    match metric(addr, "switchyard_plugin_panics_total") {
        Some(seen) if seen == provoked => {}
        other => failures.push(format!(
            "the daemon counted {other:?} panics; we caused {provoked}"
        )),
    }
    match metric(addr, "switchyard_reloads_total{result=\"failed\"}") {
        Some(0) => {}
        other => failures.push(format!("failed reloads: {other:?}")),
    }
    let warm = samples.last().map_or(20, |s| (s.seconds / 5).max(20));
    let after: Vec<&Sample> = samples.iter().filter(|s| s.seconds > warm).collect();
    if after.len() >= 2 {
        let first = after[0];
        let last = after[after.len() - 1];
        let max_during = |f: fn(&Sample) -> u64| after.iter().map(|s| f(s)).max().unwrap();
        // Memory: within 10% (or 8 MiB) of what it was when warm.
        let allowed = (first.rss_kib / 10).max(8 * 1024);
        if last.rss_kib > first.rss_kib + allowed {
            failures.push(format!(
                "RSS grew from {} KiB at {} s to {} KiB at {} s",
                first.rss_kib, first.seconds, last.rss_kib, last.seconds
            ));
        }
        // Descriptors and threads: they follow the load in flight, which is steady.
        if last.fds > first.fds + 64 {
            failures.push(format!(
                "descriptors grew from {} to {}",
                first.fds, last.fds
            ));
        }
        if max_during(|s| s.threads) > first.threads + 32 {
            failures.push(format!(
                "threads grew from {} to {}",
                first.threads,
                max_during(|s| s.threads)
            ));
        }
    } else {
        failures.push("too few samples after warm-up to judge growth".into());
    }
    if failures.is_empty() {
        println!("soak: passed");
        true
    } else {
        for failure in &failures {
            println!("soak FAILED: {failure}");
        }
        false
    }
}
