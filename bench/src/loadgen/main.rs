//! The load generator of switchyard's benchmark suite. One mode per load; each prints one
//! `RESULT key=value ...` line for `bench/run.py` to read.
//!
//! ```text
//! loadgen ws-echo      --addr A [--conns 50] [--size 64] [--inflight 1] [--secs 5] [--warmup 1]
//! loadgen tcp-echo     --addr A [--upgrade echo] [same as ws-echo]
//! loadgen ws-handshake --addr A [--conns 50] [--secs 5]
//! loadgen idle         --addr A [--conns 10000] [--hold 10]
//! loadgen bulk         --addr A [--upgrade tcp --path /sink] [--mib 1024]
//! loadgen h2c-streams  --addr A [--conns 10000] [--sources 5] [--every 20] [--secs 60]
//! loadgen tls-handshake --addr A --ca FILE [--name localhost] [--conns 8] [--secs 5]
//! loadgen ws-fanout    --addr A [--path /shared] [--conns 1000] [--secs 5] [--start LINE]
//! ```

mod bulk;
mod echo;
mod fanout;
mod h2c_streams;
mod handshake;
mod idle;
mod setup;
mod stats;
mod tls_handshake;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

pub struct Args(HashMap<String, String>);

impl Args {
    fn parse(args: impl Iterator<Item = String>) -> Args {
        let mut map = HashMap::new();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let key = arg.trim_start_matches("--").to_string();
            let value = match args.peek() {
                Some(next) if !next.starts_with("--") => args.next().unwrap(),
                _ => "true".into(),
            };
            map.insert(key, value);
        }
        Args(map)
    }

    pub fn get<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        self.0.get(key).map_or(default, |v| {
            v.parse().unwrap_or_else(|_| panic!("bad --{key} {v}"))
        })
    }

    pub fn text(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn addr(&self) -> SocketAddr {
        self.text("addr")
            .expect("--addr")
            .parse()
            .expect("--addr host:port")
    }

    pub fn secs(&self, key: &str, default: f64) -> Duration {
        Duration::from_secs_f64(self.get(key, default))
    }
}

fn main() {
    let mut argv = std::env::args().skip(1);
    let mode = argv.next().unwrap_or_default();
    let args = Args::parse(argv);
    match mode.as_str() {
        "ws-echo" => echo::run(&args, true),
        "tcp-echo" => echo::run(&args, false),
        "ws-handshake" => handshake::run(&args),
        "idle" => idle::run(&args),
        "bulk" => bulk::run(&args),
        "h2c-streams" => h2c_streams::run(&args),
        "tls-handshake" => tls_handshake::run(&args),
        "ws-fanout" => fanout::run(&args),
        _ => {
            eprintln!(
                "usage: loadgen ws-echo|tcp-echo|ws-handshake|idle|bulk|h2c-streams|tls-handshake|ws-fanout --addr HOST:PORT ..."
            );
            std::process::exit(2);
        }
    }
}
