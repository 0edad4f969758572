//! What a program writes to stderr, made fit for the daemon's log: each line cut to
//! [`LOGGED_LINE`] bytes and its control characters escaped, so a client whose messages a
//! program quotes on stderr writes neither megabytes nor terminal controls into the log.
//! (An attacker's review: 64 KiB lines, 5-7 MB of log a second from one address, and a
//! carriage return that let a forged line overwrite the real one's start on a terminal.)

/// Most bytes of one stderr line logged; the rest is counted, not shown.
pub const LOGGED_LINE: usize = 1024;

/// Stderr lines logged a second for one client address's programs, all of them together,
/// in bursts of twice as many (what a program prints as it starts fits). Shared rather
/// than each program's own, so that reconnecting for a new program's allowance gains an
/// address nothing.
pub const LINES_PER_CLIENT_PER_SEC: u32 = 50;

/// `line` (without its newline) as it goes into the log: invalid UTF-8 replaced, control
/// characters but tab escaped (`\r`, `\u{1b}`), cut at [`LOGGED_LINE`] bytes with the
/// whole line's length said.
pub fn loggable(line: &[u8]) -> String {
    let shown = &line[..line.len().min(LOGGED_LINE)];
    let mut text = String::with_capacity(shown.len() + 32);
    for c in String::from_utf8_lossy(shown).chars() {
        match c {
            '\t' => text.push(c),
            c if c.is_control() => text.extend(c.escape_default()),
            c => text.push(c),
        }
    }
    if line.len() > LOGGED_LINE {
        text.push_str(&format!("… ({} bytes)", line.len()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_line_is_logged_as_it_is() {
        assert_eq!(loggable(b"bad input: x\ty"), "bad input: x\ty");
        assert_eq!(loggable("naïve ünïcode".as_bytes()), "naïve ünïcode");
    }

    #[test]
    fn control_characters_are_escaped_not_written() {
        assert_eq!(
            loggable(b"ok\r[ERROR switchyard] forged\x1b[2K\x00"),
            "ok\\r[ERROR switchyard] forged\\u{1b}[2K\\u{0}"
        );
        assert_eq!(loggable(b"\xff\xfe"), "\u{fffd}\u{fffd}");
    }

    #[test]
    fn a_long_line_is_cut_with_its_length() {
        let line = vec![b'q'; 60 * 1024];
        let logged = loggable(&line);
        assert!(logged.starts_with(&"q".repeat(LOGGED_LINE)));
        assert!(
            logged.ends_with("… (61440 bytes)"),
            "{}",
            &logged[LOGGED_LINE..]
        );
        assert_eq!(logged.len(), LOGGED_LINE + "… (61440 bytes)".len());
        // Cut inside a character: the part shown is replaced, never split.
        let mut wide = vec![b'a'; LOGGED_LINE - 1];
        wide.extend_from_slice("é".as_bytes());
        assert!(loggable(&wide).starts_with(&format!("{}\u{fffd}…", "a".repeat(LOGGED_LINE - 1))));
    }
}
