//! The daemon's logger: `RUST_LOG` read by env_logger's filter, each line formatted here
//! into a buffer of the thread's own and handed to [`super::log_writer`].
//!
//! ```text
//! [2026-12-05T12:36:26.345Z INFO  switchyard] 2 event loop(s); listening on 127.0.0.1:8080
//! ```
//!
//! As env_logger writes it, the level coloured on a terminal (`RUST_LOG_STYLE=never` or
//! `always` says otherwise); under `SWITCHYARD_ACCESS_LOG=json` every line is one JSON
//! object ([`crate::access`]). env_logger's own writing is not used: it copied each line
//! twice and took a lock shared by every thread to write it, which made the access log the
//! daemon's largest cost when a client pipelined requests.

use super::log_writer;
use crate::access;
use std::cell::RefCell;
use std::io::Write as _;

struct DaemonLog {
    filter: env_logger::Logger,
    color: bool,
}

thread_local! {
    /// The line being formatted, its room kept for the thread's next line.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Room kept between lines (a longer line's is given back).
const KEEP: usize = 16 * 1024;

impl log::Log for DaemonLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.filter.matches(record) {
            return;
        }
        let important = record.level() <= log::Level::Warn;
        let written = LINE.with(|line| {
            // A line formatted while another is (a value whose formatting logs) gets a
            // buffer of its own.
            let Ok(mut line) = line.try_borrow_mut() else {
                return false;
            };
            line.clear();
            format_line(&mut line, record, self.color);
            log_writer::push(&line, important);
            if line.capacity() > KEEP {
                *line = Vec::new();
            }
            true
        });
        if !written {
            let mut line = Vec::new();
            format_line(&mut line, record, self.color);
            log_writer::push(&line, important);
        }
    }

    fn flush(&self) {}
}

/// `record` as one line, with its newline.
fn format_line(line: &mut Vec<u8>, record: &log::Record<'_>, color: bool) {
    format_line_at(line, record, color, std::time::SystemTime::now());
}

/// [`format_line`] with the time given.
fn format_line_at(
    line: &mut Vec<u8>,
    record: &log::Record<'_>,
    color: bool,
    now: std::time::SystemTime,
) {
    if access::is_json() {
        if record.target() == "switchyard::access" {
            let _ = writeln!(line, "{}", record.args());
        } else {
            let json = access::json_log_line(record.level(), record.target(), record.args(), now);
            let _ = writeln!(line, "{json}");
        }
        return;
    }
    let (style, reset) = match color {
        true => (level_style(record.level()), "\x1b[0m"),
        false => ("", ""),
    };
    let _ = writeln!(
        line,
        "[{} {style}{:<5}{reset} {}] {}",
        access::rfc3339_millis(now),
        record.level(),
        record.target(),
        record.args()
    );
}

/// The colours env_logger gives levels.
fn level_style(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "\x1b[31m",
        log::Level::Warn => "\x1b[33m",
        log::Level::Info => "\x1b[32m",
        log::Level::Debug => "\x1b[34m",
        log::Level::Trace => "\x1b[36m",
    }
}

/// The line that says how many lines were dropped, as a warning of `switchyard::log`
/// stamped with the time the first was.
fn dropped_line(dropped: u64, when: std::time::SystemTime) -> Vec<u8> {
    let mut line = Vec::new();
    let args = format_args!("{dropped} log lines dropped: stderr did not keep up");
    let record = log::Record::builder()
        .level(log::Level::Warn)
        .target("switchyard::log")
        .args(args)
        .build();
    format_line_at(&mut line, &record, false, when);
    line
}

/// Installs the logger: `RUST_LOG` (`info` when unset), lines to stderr from a thread of
/// their own.
pub fn init() {
    let filter =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let color = match std::env::var("RUST_LOG_STYLE").as_deref() {
        Ok("always") => true,
        Ok("never") => false,
        _ => std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    log::set_max_level(filter.filter());
    log_writer::start(dropped_line);
    if let Some(text) = std::env::var("RUST_LOG")
        .ok()
        .as_deref()
        .and_then(regex_like)
    {
        // Written past the filter (a pattern that matches no line would silence it too),
        // as every other line is formatted (JSON included).
        let args = format_args!(
            "RUST_LOG's /{text} keeps the lines that contain it as written: a plain \
             substring, not a regular expression"
        );
        let record = log::Record::builder()
            .level(log::Level::Warn)
            .target("switchyard::log")
            .args(args)
            .build();
        let mut line = Vec::new();
        format_line(&mut line, &record, color);
        log_writer::push(&line, true);
    }
    if log::set_boxed_logger(Box::new(DaemonLog { filter, color })).is_err() {
        eprintln!("switchyard: a logger was installed already");
    }
}

/// The `/text` part of a `RUST_LOG` that reads like a regular expression (env_logger's
/// filter with its `regex` feature), which is matched here as a plain substring.
fn regex_like(spec: &str) -> Option<&str> {
    let (_, text) = spec.split_once('/')?;
    text.contains(|c| "^$*+?()[]{}|\\".contains(c))
        .then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_as_env_logger_wrote_it() {
        let args = format_args!("listening on {}", "127.0.0.1:8080");
        let record = log::Record::builder()
            .level(log::Level::Info)
            .target("switchyard")
            .args(args)
            .build();
        let mut line = Vec::new();
        format_line(&mut line, &record, false);
        let line = String::from_utf8(line).unwrap();
        let (time, rest) = line[1..].split_once(' ').unwrap();
        assert!(time.len() == 24 && time.ends_with('Z'), "{line}");
        assert_eq!(rest, "INFO  switchyard] listening on 127.0.0.1:8080\n");
        let mut colored = Vec::new();
        format_line(&mut colored, &record, true);
        assert!(String::from_utf8(colored)
            .unwrap()
            .contains(" \x1b[32mINFO \x1b[0m switchyard] "));
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_250);
        let dropped = String::from_utf8(dropped_line(7, when)).unwrap();
        assert_eq!(
            dropped,
            "[2023-11-14T22:13:20.250Z WARN  switchyard::log] 7 log lines dropped: stderr did not keep up\n"
        );
    }

    /// `RUST_LOG` as the settings table says: per-target levels, and a `/text` suffix
    /// that keeps lines containing `text`, a substring (`.` is not "any character").
    #[test]
    fn rust_log_filters_by_target_and_by_text() {
        let filter = env_logger::Builder::new()
            .parse_filters("info,switchyard::access=off/listening.on")
            .build();
        let line = |target: &str, level: log::Level, text: &str| {
            let args = format_args!("{text}");
            let record = log::Record::builder()
                .level(level)
                .target(target)
                .args(args)
                .build();
            filter.matches(&record)
        };
        assert!(line("switchyard", log::Level::Info, "now listening.on :80"));
        assert!(!line(
            "switchyard",
            log::Level::Info,
            "now listening on :80"
        ));
        assert!(!line("switchyard", log::Level::Debug, "listening.on"));
        assert!(!line(
            "switchyard::access",
            log::Level::Info,
            "listening.on"
        ));
        // A filter written for regular expressions is told of at start.
        assert_eq!(regex_like("info/^GET|POST"), Some("^GET|POST"));
        assert_eq!(regex_like("info/listening.on"), None);
        assert_eq!(regex_like("info,switchyard::access=off"), None);
    }
}
