//! Bulk transfer: send M MiB to a sink (directly, or through `Upgrade: tcp`), end the
//! sending, and wait for the sink's 8-byte count. Prints MiB/s.

use crate::setup::open;
use crate::stats::report;
use crate::Args;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Instant;

pub fn run(args: &Args) {
    let addr = args.addr();
    let mib: u64 = args.get("mib", 1024);
    let path = args.text("path").unwrap_or("/");
    let mut stream = open(addr, args.text("upgrade"), path).expect("connect");
    let block = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    for _ in 0..mib {
        stream.write_all(&block).unwrap();
    }
    stream.shutdown(Shutdown::Write).unwrap();
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(
        u64::from_le_bytes(count),
        mib << 20,
        "the sink got every byte"
    );
    report(&[
        ("mib_per_s", format!("{:.0}", mib as f64 / elapsed)),
        ("secs", format!("{elapsed:.3}")),
    ]);
}
