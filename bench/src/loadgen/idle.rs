//! Idle load: open N connections and hold them, so that the server's memory per connection
//! can be read from its RSS. WebSockets by default; `--upgrade TOKEN --path P` another
//! upgrade, `--upgrade none` plain TCP. Prints `RESULT open=N` once all are open, then
//! holds.

use crate::setup::open;
use crate::stats::report;
use crate::Args;
use std::io::Write;

pub fn run(args: &Args) {
    let addr = args.addr();
    let conns: usize = args.get("conns", 10_000);
    let hold = args.secs("hold", 10.0);
    let upgrade = match args.text("upgrade") {
        None => Some("websocket"),
        Some("none") => None,
        Some(token) => Some(token),
    };
    let path = args.text("path").unwrap_or("/");
    let mut held = Vec::with_capacity(conns);
    for i in 0..conns {
        match open(addr, upgrade, path) {
            Ok(stream) => held.push(stream),
            Err(e) => panic!("connection {i}: {e}"),
        }
    }
    report(&[("open", held.len().to_string())]);
    std::io::stdout().flush().unwrap();
    std::thread::sleep(hold);
}
