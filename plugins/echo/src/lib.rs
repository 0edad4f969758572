//! `Upgrade: echo`: after the `101`, every byte the client sends comes back, until it stops
//! sending. The whole plugin contract in one file; start here to write your own.

#![forbid(unsafe_code)]

use protocol_api::{export_plugin, Connection, Decision, Protocol, Request};
use std::io::{self, Read, Write};
use std::net::Shutdown;

pub struct Echo;

impl Protocol for Echo {
    const NAME: &'static str = "echo";
    const TOKENS: &'static [&'static str] = &["echo"];
    type Session = ();

    fn new() -> Result<Self, String> {
        Ok(Echo)
    }

    fn negotiate(&self, _request: &Request<'_>) -> Decision<()> {
        Decision::accept(())
    }

    fn serve(&self, _: (), request: &Request<'_>, conn: &mut Connection<'_>) -> io::Result<()> {
        log::debug!("echoing for {}", request.peer());
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                // The client is done sending (or the daemon is stopping): finish our side too.
                return conn.shutdown(Shutdown::Write);
            }
            conn.write_all(&buf[..n])?;
        }
    }
}

export_plugin!(Echo);
