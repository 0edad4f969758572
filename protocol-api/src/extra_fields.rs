//! The header fields an operator adds to answers (`SWITCHYARD_RESPONSE_HEADERS`:
//! `Strict-Transport-Security`, `Content-Security-Policy` and the like), read by one set of
//! rules for the daemon, which writes them on its HTTP/1.1 answers, and for a plugin that
//! answers in another protocol (the h2c relay's HTTP/2 answers): an operator who turns HSTS
//! on gets it however the browser's connection goes.
//!
//! As nginx's `add_header`: on answers of 1xx to 3xx (the `101` included, as websocketd's
//! `--header`), not on errors (a `Cache-Control` meant for pages would let a cache keep a
//! `503` for everyone, a review noted); an answer that has a field of the same name keeps
//! its own; `Strict-Transport-Security` over TLS only (RFC 6797 §7.2). Fields that frame the
//! message, say what its body is, or make the switch are the daemon's alone.

/// The environment variable that holds them.
pub const VARIABLE: &str = "SWITCHYARD_RESPONSE_HEADERS";

/// Fields an operator adds to answers, as read from [`VARIABLE`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraFields(Vec<(String, String)>);

/// Fields [`ExtraFields`] may not hold: HTTP/1.1's framing and connection fields, what
/// says what a body is or where it is, and the WebSocket handshake's, which only the
/// daemon and its plugins may write.
const NOT_EXTRA: [&str; 16] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "date",
    "te",
    "trailer",
    "proxy-connection",
    "content-type",
    "content-encoding",
    "content-range",
    "content-location",
    "location",
    "host",
    "expect",
];

/// Most bytes all of [`ExtraFields`] may take (curl refuses heads past 100 KB, and many
/// proxies past 8 to 16 KiB).
const EXTRA_MOST: usize = 8 * 1024;

impl ExtraFields {
    /// None.
    pub const NONE: ExtraFields = ExtraFields(Vec::new());

    /// Reads `Name: value` fields, one a line (RFC 9110 §5: a token, a colon, a value
    /// without CR, LF or NUL; white space around the value is not part of it).
    pub fn parse(text: &str) -> Result<ExtraFields, String> {
        let mut fields = Vec::new();
        if text.len() > EXTRA_MOST {
            return Err(format!("longer than {EXTRA_MOST} bytes"));
        }
        let lines = text.lines().map(|l| l.trim_matches([' ', '\t']));
        for line in lines.filter(|l| !l.is_empty()) {
            let Some((name, value)) = line.split_once(':') else {
                return Err(format!("{line:?} is not `Name: value`"));
            };
            let value = value.trim_matches([' ', '\t']);
            if !crate::fields::is_token(name) || name.len() != line.find(':').unwrap_or(0) {
                return Err(format!("{name:?} is not a field name"));
            }
            let lower = name.to_ascii_lowercase();
            if NOT_EXTRA.contains(&lower.as_str()) || lower.starts_with("sec-websocket-") {
                return Err(format!("{name} is written by the daemon alone"));
            }
            // Visible ASCII, spaces and tabs only: what every peer reads alike.
            if !value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
            {
                return Err(format!(
                    "the value of {name} holds a byte other than visible ASCII, a space or a tab"
                ));
            }
            fields.push((name.to_string(), value.to_string()));
        }
        Ok(ExtraFields(fields))
    }

    /// The fields an answer of `status` gets, over TLS (`secure`) or not, in the order
    /// they were given: none for an error (400 and up), `Strict-Transport-Security` over
    /// TLS only. The caller leaves out those the answer has a field of the same name of.
    pub fn for_answer(&self, status: u16, secure: bool) -> impl Iterator<Item = (&str, &str)> {
        let fields = match Self::are_for(status) {
            true => &self.0[..],
            false => &[][..],
        };
        (fields.iter())
            .filter(move |(name, _)| {
                secure || !name.eq_ignore_ascii_case("strict-transport-security")
            })
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// Whether answers of `status` get the fields: 1xx to 3xx, not errors (a `Cache-Control`
    /// meant for pages would let a cache keep a `503`).
    pub fn are_for(status: u16) -> bool {
        status < 400
    }

    /// The same fields with their names in lowercase, as HTTP/2 writes them (RFC 9113
    /// §8.2.1).
    pub fn lowercased(&self) -> ExtraFields {
        ExtraFields(
            (self.0.iter())
                .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
                .collect(),
        )
    }

    /// No field at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_one_a_line_and_those_the_daemon_writes_refused() {
        let extra = ExtraFields::parse(
            "Strict-Transport-Security: max-age=63072000; includeSubDomains\r\n\
             \n  Cache-Control:  no-cache, no-store \t\nX-Empty:",
        )
        .unwrap();
        let all: Vec<_> = extra.for_answer(200, true).collect();
        assert_eq!(
            all,
            [
                (
                    "Strict-Transport-Security",
                    "max-age=63072000; includeSubDomains"
                ),
                ("Cache-Control", "no-cache, no-store"),
                ("X-Empty", ""),
            ]
        );
        // Not over cleartext (RFC 6797 §7.2), and nothing on an error.
        assert_eq!(extra.for_answer(301, false).count(), 2);
        assert_eq!(extra.for_answer(404, true).count(), 0);
        let long = format!("X-Long: {}", "a".repeat(9000));
        for (bad, why) in [
            ("X-A b", "not `Name: value`"),
            ("X A: b", "not a field name"),
            ("X-A : b", "not a field name"),
            (": b", "not a field name"),
            ("Content-Length: 5", "written by the daemon alone"),
            ("connection: close", "written by the daemon alone"),
            ("Sec-WebSocket-Accept: x", "written by the daemon alone"),
            ("Content-Type: text/html", "written by the daemon alone"),
            ("Location: /elsewhere", "written by the daemon alone"),
            ("X-A: a\u{7f}b", "other than visible ASCII"),
            ("X-A: a\u{85}b", "other than visible ASCII"),
            ("X-A: \u{a0}b", "other than visible ASCII"),
            (&long, "longer than 8192 bytes"),
        ] {
            let error = ExtraFields::parse(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
        assert!(ExtraFields::parse("Content-Security-Policy: default-src 'self'").is_ok());
        let lower = extra.lowercased();
        assert_eq!(
            lower.for_answer(200, false).collect::<Vec<_>>(),
            [("cache-control", "no-cache, no-store"), ("x-empty", "")]
        );
    }
}
