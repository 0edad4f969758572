//! Idle load: open N WebSocket connections and hold them, so that the server's memory per
//! connection can be read from its RSS. Prints `RESULT open=N` once all are open, then holds.

use crate::setup::open;
use crate::stats::report;
use crate::Args;
use std::io::Write;

pub fn run(args: &Args) {
    let addr = args.addr();
    let conns: usize = args.get("conns", 10_000);
    let hold = args.secs("hold", 10.0);
    let mut held = Vec::with_capacity(conns);
    for i in 0..conns {
        match open(addr, Some("websocket"), "/") {
            Ok(stream) => held.push(stream),
            Err(e) => panic!("connection {i}: {e}"),
        }
    }
    report(&[("open", held.len().to_string())]);
    std::io::stdout().flush().unwrap();
    std::thread::sleep(hold);
}
