//! The small text rules both sides of the boundary apply, in one place: the path of a
//! request target, the elements of a comma-separated header (RFC 9110 §5.6.1), the
//! comma-separated lists of settings, and a client's text as a log line shows it.

/// True when `name` is a header field name (a token, RFC 9110 §5.1).
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The target without its query: `/chat?room=1` → `/chat`.
pub fn path(target: &str) -> &str {
    target.split_once('?').map_or(target, |(path, _)| path)
}

/// The trimmed, non-empty elements of a comma-separated header value (RFC 9110 §5.6.1:
/// `#element` lists allow empty elements and optional white space around commas).
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|item| !item.is_empty())
}

/// `bytes` without the optional white space (spaces and tabs) around it.
pub fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// The trimmed, non-empty entries of a comma-separated setting (`a, b,,c` → `a`, `b`, `c`).
pub fn setting_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|e| !e.is_empty())
}

/// `bytes` a client chose (a path, a program's line quoting a message) as a log line may
/// show them: invalid UTF-8 replaced, escaped as Rust's `Debug` escapes a string (control
/// and format characters, line and paragraph separators, bidirectional overrides, C1
/// controls, and the backslash, so `\r` in the log is never a carriage return), and cut at
/// `max` bytes of the escaped text with the whole's length said (`… (61440 bytes)`). The
/// access line escapes its request line the same way.
pub fn for_log(bytes: &[u8], max: usize) -> String {
    // Each byte shown is at least a byte of the escaped text: `max` of them suffice.
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]);
    let mut shown = String::with_capacity(max.min(bytes.len()) + 24);
    let mut cut = bytes.len() > max;
    for c in head.chars() {
        let before = shown.len();
        shown.extend(c.escape_debug());
        if shown.len() > max {
            shown.truncate(before); // an escape is shown whole or not at all
            cut = true;
            break;
        }
    }
    if cut {
        shown.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    shown
}

/// A request's path as a plugin's log line shows it: [`for_log`], cut at [`LOGGED_PATH`]
/// bytes (a client chooses it, up to the daemon's target limit, 8 KiB by default).
pub fn path_for_log(path: &str) -> String {
    for_log(path.as_bytes(), LOGGED_PATH)
}

/// Most bytes of a request's path a log line shows ([`path_for_log`]).
pub const LOGGED_PATH: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_text_is_escaped_for_the_log_and_cut_after_escaping() {
        assert_eq!(for_log(b"bad input: x\ty", 64), "bad input: x\\ty");
        assert_eq!(for_log("naïve ünïcode".as_bytes(), 64), "naïve ünïcode");
        assert_eq!(
            for_log(
                "ok\r[ERROR x] forged\x1b[2K\u{2028}\u{202e}\u{85}\u{9b}\u{200b}\\r".as_bytes(),
                128
            ),
            "ok\\r[ERROR x] forged\\u{1b}[2K\\u{2028}\\u{202e}\\u{85}\\u{9b}\\u{200b}\\\\r"
        );
        assert_eq!(for_log(b"\xff\xfe", 64), "\u{fffd}\u{fffd}");
        // Cut: at `max` bytes of what is shown, escapes whole, with the length said.
        let long = vec![b'q'; 60 * 1024];
        assert_eq!(
            for_log(&long, 1024),
            format!("{}… (61440 bytes)", "q".repeat(1024))
        );
        let escapes = vec![0x1b; 1024];
        let shown = for_log(&escapes, 1024);
        assert_eq!(
            shown,
            format!("{}… (1024 bytes)", "\\u{1b}".repeat(1024 / 6))
        );
        // Cut inside a character: the part read is replaced, never split.
        let mut wide = vec![b'a'; 1023];
        wide.extend_from_slice("é".as_bytes());
        assert_eq!(
            for_log(&wide, 1024),
            format!("{}… (1025 bytes)", "a".repeat(1023))
        );
        wide.truncate(1022);
        wide.extend_from_slice("é".as_bytes());
        assert_eq!(for_log(&wide, 1024), format!("{}é", "a".repeat(1022)));
    }

    #[test]
    fn rfc9110_5_6_1_lists_skip_empty_elements_and_white_space() {
        let items: Vec<&[u8]> = list_items(b" a ,,\tb, c/1 ,").collect();
        assert_eq!(items, [&b"a"[..], b"b", b"c/1"]);
        assert_eq!(path("/x?y=1"), "/x");
        assert_eq!(path("/x"), "/x");
        assert_eq!(setting_list(" a, ,b ").collect::<Vec<_>>(), ["a", "b"]);
    }
}
