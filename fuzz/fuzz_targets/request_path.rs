//! Request paths as routes see them (`protocol_api::path`): a normalised path is its own
//! normal form (normalising again changes nothing), holds no dot-segment, starts with `/`,
//! and is what RFC 3986 §5.2.4's own algorithm (written out below as the RFC gives it, on
//! an input buffer and an output buffer) makes of the path; and a route is never matched
//! by a path whose raw form lies under another routed prefix it climbed out of.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol_api::path::{PathError, RequestPath};

/// RFC 3986 §5.2.4, step by step (A to E), on strings.
fn remove_dot_segments(path: &str) -> String {
    let mut input = path.to_string();
    let mut output = String::new();
    while !input.is_empty() {
        if let Some(rest) = input
            .strip_prefix("../")
            .or_else(|| input.strip_prefix("./"))
        {
            input = rest.to_string(); // A
        } else if input.starts_with("/./") {
            input = input[2..].to_string(); // B
        } else if input == "/." {
            input = "/".to_string(); // B
        } else if input.starts_with("/../") || input == "/.." {
            input = format!("/{}", &input[if input == "/.." { 3 } else { 4 }..]); // C
            match output.rfind('/') {
                Some(at) => output.truncate(at),
                None => output.clear(),
            }
        } else if input == "." || input == ".." {
            input.clear(); // D
        } else {
            // E: the first segment, with its leading "/" if any, moves to the output.
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| i + start);
            output.push_str(&input[..end]);
            input = input[end..].to_string();
        }
    }
    output
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let target = format!("/{text}");
    let Ok(path) = RequestPath::parse(&target) else {
        return;
    };
    let normal = path.path();
    assert!(normal.starts_with('/'), "{target:?} -> {normal:?}");
    assert!(
        !normal.split('/').any(|s| s == "." || s == ".."),
        "{target:?} -> {normal:?}"
    );
    let again = RequestPath::parse(normal).expect("a normal path parses");
    assert_eq!(again.path(), normal, "idempotent");
    // The RFC's own algorithm on the same path (its %2E decoded, as ours does first).
    let raw = target.split('?').next().unwrap();
    let dotted = raw.replace("%2e", ".").replace("%2E", ".");
    let expected = remove_dot_segments(&dotted);
    let climbs = {
        // Climbing above "/" is where the RFC's algorithm silently stops and ours refuses.
        let mut depth: i64 = 0;
        dotted[1..]
            .split('/')
            .try_for_each(|s| {
                depth += match s {
                    ".." => -1,
                    "." => 0,
                    _ => 1,
                };
                if depth < 0 {
                    Err(())
                } else {
                    Ok(())
                }
            })
            .is_err()
    };
    if !climbs {
        let expected = if expected.is_empty() {
            "/".to_string()
        } else {
            expected
        };
        assert_eq!(normal, expected, "{target:?}");
    }
    // A prefix the raw path is under and the normal path is not refuses the request.
    if let Some(at) = raw[1..].find('/') {
        let prefix = &raw[..at + 2];
        let routes = [prefix, "/"];
        let routed = path.longest_prefix(&routes, |r| r);
        if dotted.starts_with(prefix) && !normal.starts_with(prefix) {
            assert!(
                matches!(routed, Err(PathError::ClimbsOut { .. })),
                "{target:?}"
            );
        } else {
            assert!(routed.is_ok());
        }
    }
});
