//! The small text rules both sides of the boundary apply, in one place: the path of a
//! request target, the elements of a comma-separated header (RFC 9110 §5.6.1), and the
//! comma-separated lists of settings.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9110_5_6_1_lists_skip_empty_elements_and_white_space() {
        let items: Vec<&[u8]> = list_items(b" a ,,\tb, c/1 ,").collect();
        assert_eq!(items, [&b"a"[..], b"b", b"c/1"]);
        assert_eq!(path("/x?y=1"), "/x");
        assert_eq!(path("/x"), "/x");
        assert_eq!(setting_list(" a, ,b ").collect::<Vec<_>>(), ["a", "b"]);
    }
}
