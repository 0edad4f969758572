//! Plugin loading and settings: every bad file gets one error line naming it and the
//! reason, the rest still load; a bad setting or folder stops the start with status 2.

use crate::support::{upgrade_request, Daemon};

#[test]
fn broken_plugin_files_are_logged_by_name_and_skipped() {
    let daemon = Daemon::builder()
        .plugin("switchyard-echo")
        .plugin("fixture-probe")
        .plugin_as("fixture-dup", "libzz_dup.so")
        .plugin_as("fixture-badmagic", "libbadmagic.so")
        .plugin_as("fixture-newminor", "libnewminor.so")
        .plugin_as("fixture-v2", "libv2.so")
        .file("libgarbage.so", b"this is not an ELF file")
        .file("README.txt", b"not a library, not even looked at")
        .start();
    let logs = daemon.logs();
    let expect = [
        (
            "libgarbage.so: cannot be opened as a shared library",
            "garbage",
        ),
        (
            "libbadmagic.so: descriptor has the wrong magic bytes",
            "wrong magic",
        ),
        (
            "libnewminor.so: built for plugin ABI 1.99, newer than this daemon's 1.10",
            "newer minor",
        ),
        (
            "libv2.so: built for plugin ABI v2; this daemon loads v1",
            "other major",
        ),
        (
            "libzz_dup.so: token \"echo\" is already served by plugin echo",
            "duplicate token",
        ),
    ];
    for (needle, what) in expect {
        let line = logs
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{what}: no line with {needle:?}:\n{logs}"));
        assert!(
            line.contains("ERROR") && line.ends_with("skipped"),
            "{what}: {line}"
        );
    }
    assert!(!logs.contains("README.txt"), "{logs}");
    assert!(logs.contains("loaded 2 plugin(s)"), "{logs}");
    assert!(
        logs.contains("echo [echo]")
            && logs.contains("probe [probe, boom, hold, picky, stack, whoami]"),
        "{logs}"
    );

    let mut client = daemon.client();
    client.send(upgrade_request("/", "echo"));
    assert_eq!(client.response().status, 101, "the good plugins serve");
}

/// A plugin whose `new()` refuses its settings stops the start, as a bad daemon setting
/// does: a typo must not silently remove a protocol.
#[test]
fn a_plugin_whose_init_fails_stops_the_start_with_status_2() {
    let (status, logs) = Daemon::builder()
        .plugin("switchyard-echo")
        .plugin("fixture-probe")
        .env("PROBE_FAIL_INIT", "1")
        .run_to_exit();
    assert_eq!(status.code(), Some(2), "{logs}");
    let line = logs
        .lines()
        .find(|l| l.contains("libfixture_probe.so"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(
        line.contains("ERROR") && line.contains("PROBE_FAIL_INIT is set; not starting"),
        "{line}"
    );
    assert!(!logs.contains("listening on"), "{logs}");
}

#[test]
fn an_unreadable_plugin_folder_stops_the_start_with_status_2() {
    let builder = Daemon::builder();
    let missing = builder.plugin_dir().join("no-such-folder");
    let (status, logs) = builder
        .env("SWITCHYARD_PLUGIN_DIR", missing.to_str().unwrap())
        .run_to_exit();
    assert_eq!(status.code(), Some(2), "{logs}");
    assert!(
        logs.contains("cannot read the plugin folder") && logs.contains("no-such-folder"),
        "{logs}"
    );
}

#[test]
fn an_invalid_setting_stops_the_start_naming_variable_and_value() {
    let (status, logs) = Daemon::builder()
        .env("SWITCHYARD_WORKERS", "many")
        .run_to_exit();
    assert_eq!(status.code(), Some(2), "{logs}");
    assert!(
        logs.contains("invalid SWITCHYARD_WORKERS=\"many\": not a whole number"),
        "{logs}"
    );
    let (status, logs) = Daemon::builder()
        .env("SWITCHYARD_LISTEN", "nowhere")
        .run_to_exit();
    assert_eq!(status.code(), Some(2), "{logs}");
    assert!(logs.contains("SWITCHYARD_LISTEN=\"nowhere\""), "{logs}");
}
