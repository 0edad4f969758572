//! `Upgrade: {{name}}`: a switchyard plugin. After the `101` it sends back every byte the
//! client sends, until the client stops sending. Replace `serve` with your protocol.

use protocol_api::metrics::{self, Counter};
use protocol_api::{export_plugin, Connection, Decision, Protocol, Request};
use std::io::{self, Read, Write};
use std::net::Shutdown;

pub struct Plugin {
    /// Connections served: `switchyard_<name>_connections_total` in the daemon's /metrics.
    served: Counter,
}

impl Protocol for Plugin {
    const NAME: &'static str = "{{name}}";
    const TOKENS: &'static [&'static str] = &["{{name}}"]; // the Upgrade tokens served
    // The settings `new` reads, for the daemon's --help and --check:
    // `Setting::new("SWITCHYARD_{{setting_prefix}}_PORT", "80", "what it does")`.
    const SETTINGS: &'static [protocol_api::Setting] = &[];
    type Session = (); // what negotiate hands to serve

    fn new() -> Result<Self, String> {
        // Read settings here (SWITCHYARD_{{setting_prefix}}_*); an Err naming the variable
        // and its value stops the daemon's start with exit status 2. Declare metrics once.
        let served = metrics::counter("connections_total", "Connections served.", &[])?;
        Ok(Plugin {
            served: served.with(&[]),
        })
    }

    fn negotiate(&self, request: &Request<'_>) -> Decision<()> {
        log::debug!("{}: {} {}", Self::NAME, request.method(), request.target());
        Decision::accept(()) // or Decision::Decline, or Decision::reject(403, "no")
    }

    fn serve(&self, _: (), _request: &Request<'_>, conn: &mut Connection<'_>) -> io::Result<()> {
        self.served.inc(); // one relaxed atomic add on a cell the daemon lends
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = conn.read(&mut buf)?; // bytes sent with the request come first
            if n == 0 {
                return conn.shutdown(Shutdown::Write);
            }
            conn.write_all(&buf[..n])?;
        }
    }
}

export_plugin!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;
    use protocol_api::testing::{self, TestRequest};

    #[test]
    fn switches_and_echoes() {
        let request = TestRequest::get("/").header("Upgrade", "{{name}}");
        let plugin = Plugin::new().unwrap();
        let connections = plugin.served;
        let Decision::Accept { session, .. } = request.negotiate(&plugin) else {
            panic!("negotiate did not accept");
        };
        let (mut client, served) = testing::serve(plugin, session, request);
        client.write_all(b"hello").unwrap();
        let mut echoed = [0u8; 5];
        client.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"hello");
        client.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the plugin ends its side when the client does");
        served.join().unwrap().unwrap();
        assert_eq!(connections.get(), 1, "counted");
    }
}
