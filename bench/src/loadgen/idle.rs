//! Idle load: open N connections and hold them, so that the server's memory per connection
//! can be read from its RSS. WebSockets by default; `--upgrade TOKEN --path P` another
//! upgrade, `--upgrade none` plain TCP, `--upgrade h2-prior-knowledge` HTTP/2 (the
//! preface and an empty SETTINGS frame, nothing read). Prints `RESULT open=N` once all are
//! open, then holds.

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
        if upgrade == Some("h2-prior-knowledge") {
            let mut stream =
                open(addr, None, path).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            // RFC 9113 §3.4: the preface, then SETTINGS (empty: every default).
            stream
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            held.push(stream);
            continue;
        }
        match open(addr, upgrade, path) {
            Ok(stream) => held.push(stream),
            Err(e) => panic!("connection {i}: {e}"),
        }
    }
    report(&[("open", held.len().to_string())]);
    std::io::stdout().flush().unwrap();
    std::thread::sleep(hold);
}
