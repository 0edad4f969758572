//! What programs write to stderr, in the daemon's log within bounds: each line escaped and
//! cut ([`protocol_api::fields::for_log`], at [`LOGGED_LINE`] bytes), so a client whose
//! messages a program quotes writes neither megabytes nor terminal controls into the log;
//! and a number of lines a second for each client address's programs together, and for
//! everyone's. (Two attackers' reviews: 64 KiB lines, 5-7 MB of log a second from one
//! address, a carriage return that let a forged line overwrite the real one's start on a
//! terminal; then Unicode separators and overrides, escapes that grew a line sixfold past
//! its cut, and 16 addresses writing 6.4 MB a second.)

use protocol_api::rate::PerClient;

/// Most bytes of one stderr line logged, escaped; the rest is counted, not shown.
pub const LOGGED_LINE: usize = 1024;

/// Stderr lines logged a second for one client address's programs, all of them together,
/// in bursts of twice as many (what a program prints as it starts fits). Shared rather
/// than each program's own, so that reconnecting for a new program's allowance gains an
/// address nothing.
pub const LINES_PER_CLIENT_PER_SEC: u32 = 50;

/// Stderr lines logged a second for all clients' programs (bursts of twice as many):
/// addresses are cheap to an attacker with an IPv6 network.
pub const LINES_PER_SEC: u32 = 200;

/// `line` (without its newline) as it goes into the log.
pub fn loggable(line: &[u8]) -> String {
    protocol_api::fields::for_log(line, LOGGED_LINE)
}

/// The allowances of stderr lines logged: each client's, and everyone's.
pub struct Allowances {
    per_client: PerClient,
    everyone: PerClient,
}

impl Allowances {
    pub fn new() -> Allowances {
        Allowances {
            per_client: PerClient::new(LINES_PER_CLIENT_PER_SEC),
            everyone: PerClient::new(LINES_PER_SEC),
        }
    }

    /// Whether a line of `client`'s program may be logged now (counted if so).
    pub fn allow(&self, client: u64) -> bool {
        self.per_client.allow(client) && self.everyone.allow(0)
    }
}
