//! `include/switchyard_plugin.h` against `src/abi.rs`: a C program compiled with the
//! system's C compiler prints every size, field offset and constant of the header, and each
//! must equal the Rust definition. A change to one side alone fails here.

use protocol_api::abi::*;
use std::collections::BTreeSet;
use std::mem::{offset_of, size_of};
use std::path::Path;
use std::process::Command;

/// What the Rust side says, in the C program's format.
fn rust_side() -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    macro_rules! size {
        ($c:literal, $t:ty) => {
            lines.insert(format!("size {} {}", $c, size_of::<$t>()));
        };
    }
    macro_rules! field {
        ($c:literal, $t:ty, $($f:ident),+) => {
            $(lines.insert(format!("offset {}.{} {}", $c, stringify!($f), offset_of!($t, $f)));)+
        };
    }
    macro_rules! constant {
        ($($c:literal = $v:expr),+ $(,)?) => {
            $(lines.insert(format!("const {} {}", $c, $v as i64));)+
        };
    }
    size!("switchyard_bytes", RawBytes);
    field!("switchyard_bytes", RawBytes, ptr, len);
    size!("switchyard_header", RawHeader);
    field!("switchyard_header", RawHeader, name, value);
    size!("switchyard_request", RawRequest);
    field!(
        "switchyard_request",
        RawRequest,
        method,
        target,
        version_minor,
        headers,
        headers_len,
        peer,
        body,
        protocol,
        arrival,
        may_block,
        tls,
        tls_version,
        tls_cipher,
        tls_alpn,
        tls_server_name,
        tls_client_subject
    );
    size!("switchyard_connection", RawConnection);
    field!(
        "switchyard_connection",
        RawConnection,
        ctx,
        read,
        write,
        write_vectored,
        shutdown,
        set_read_timeout,
        buffered,
        is_stopping,
        fd,
        set_write_timeout,
        watch,
        unwatch,
        waker
    );
    size!("switchyard_waker", RawWaker);
    field!("switchyard_waker", RawWaker, ctx, wake, clone, release);
    size!("switchyard_wants", RawWants);
    field!("switchyard_wants", RawWants, interest, timer_ms);
    size!("switchyard_message_sink", MessageSink);
    field!("switchyard_message_sink", MessageSink, ctx, set);
    size!("switchyard_response_sink", ResponseSink);
    field!(
        "switchyard_response_sink",
        ResponseSink,
        ctx,
        set_status,
        add_header,
        set_body
    );
    size!("switchyard_host", HostApi);
    field!(
        "switchyard_host",
        HostApi,
        abi_minor,
        max_log_level,
        log_enabled,
        log,
        ctx,
        metric_declare,
        metric_series,
        access_line,
        access_line_named
    );
    size!("switchyard_exchange", RawExchange);
    field!(
        "switchyard_exchange",
        RawExchange,
        peer,
        method,
        target,
        version,
        status,
        protocol,
        bytes_in,
        bytes_out,
        micros,
        reason,
        tls_version,
        tls_cipher,
        tls_alpn
    );
    size!("switchyard_request_names", RawRequestNames);
    field!(
        "switchyard_request_names",
        RawRequestNames,
        host,
        origin,
        referer,
        user_agent,
        sent
    );
    size!("switchyard_metric", RawMetric);
    field!(
        "switchyard_metric",
        RawMetric,
        kind,
        name,
        help,
        labels,
        labels_len,
        buckets,
        buckets_len,
        scale
    );
    size!("switchyard_setting", RawSetting);
    field!("switchyard_setting", RawSetting, name, help);
    lines.insert(format!(
        "offset switchyard_setting.default_value {}",
        offset_of!(RawSetting, default)
    ));
    size!("switchyard_descriptor", PluginDescriptor);
    field!(
        "switchyard_descriptor",
        PluginDescriptor,
        magic,
        abi_minor,
        size,
        name,
        build,
        tokens,
        tokens_len,
        init,
        negotiate,
        serve,
        drop_session,
        start,
        on_ready,
        drop_conn,
        settings,
        settings_len
    );
    constant!(
        "SWITCHYARD_ABI_MAJOR" = ABI_MAJOR,
        "SWITCHYARD_ABI_MINOR" = ABI_MINOR,
        "SWITCHYARD_DECISION_ACCEPT" = DECISION_ACCEPT,
        "SWITCHYARD_DECISION_REJECT" = DECISION_REJECT,
        "SWITCHYARD_DECISION_DECLINE" = DECISION_DECLINE,
        "SWITCHYARD_DECISION_ON_WORKER" = DECISION_ON_WORKER,
        "SWITCHYARD_ARRIVAL_UPGRADE" = ARRIVAL_UPGRADE,
        "SWITCHYARD_ARRIVAL_PRIOR_KNOWLEDGE" = ARRIVAL_PRIOR_KNOWLEDGE,
        "SWITCHYARD_V1_0_DECISION_ACCEPT" = v1_0::DECISION_ACCEPT,
        "SWITCHYARD_V1_0_DECISION_REJECT" = v1_0::DECISION_REJECT,
        "SWITCHYARD_V1_0_DECISION_DECLINE" = v1_0::DECISION_DECLINE,
        "SWITCHYARD_STATUS_OK" = STATUS_OK,
        "SWITCHYARD_STATUS_ERROR" = STATUS_ERROR,
        "SWITCHYARD_STATUS_PANIC" = STATUS_PANIC,
        "SWITCHYARD_READY_READABLE" = READY_READABLE,
        "SWITCHYARD_READY_WRITABLE" = READY_WRITABLE,
        "SWITCHYARD_READY_TIMER" = READY_TIMER,
        "SWITCHYARD_READY_STOPPING" = READY_STOPPING,
        "SWITCHYARD_READY_WATCHED" = READY_WATCHED,
        "SWITCHYARD_READY_RESUME" = READY_RESUME,
        "SWITCHYARD_READY_PEER_CLOSED" = READY_PEER_CLOSED,
        "SWITCHYARD_READY_WATCHED_CLOSED" = READY_WATCHED_CLOSED,
        "SWITCHYARD_READY_WOKEN" = READY_WOKEN,
        "SWITCHYARD_WANT_READ" = WANT_READ,
        "SWITCHYARD_WANT_WRITE" = WANT_WRITE,
        "SWITCHYARD_WANT_CLOSE" = WANT_CLOSE,
        "SWITCHYARD_WANT_RESUME" = WANT_RESUME,
        "SWITCHYARD_WANT_ABORT" = WANT_ABORT,
        "SWITCHYARD_SHUTDOWN_READ" = SHUTDOWN_READ,
        "SWITCHYARD_SHUTDOWN_WRITE" = SHUTDOWN_WRITE,
        "SWITCHYARD_SHUTDOWN_BOTH" = SHUTDOWN_BOTH,
        "SWITCHYARD_LOG_OFF" = LOG_OFF,
        "SWITCHYARD_LOG_ERROR" = LOG_ERROR,
        "SWITCHYARD_LOG_WARN" = LOG_WARN,
        "SWITCHYARD_LOG_INFO" = LOG_INFO,
        "SWITCHYARD_LOG_DEBUG" = LOG_DEBUG,
        "SWITCHYARD_LOG_TRACE" = LOG_TRACE,
        "SWITCHYARD_METRIC_COUNTER" = METRIC_COUNTER,
        "SWITCHYARD_METRIC_GAUGE" = METRIC_GAUGE,
        "SWITCHYARD_METRIC_HISTOGRAM" = METRIC_HISTOGRAM,
        "SWITCHYARD_METRIC_MAX_LABELS" = METRIC_MAX_LABELS,
        "SWITCHYARD_NAMED_HOST" = NAMED_HOST,
        "SWITCHYARD_NAMED_ORIGIN" = NAMED_ORIGIN,
        "SWITCHYARD_NAMED_REFERER" = NAMED_REFERER,
        "SWITCHYARD_NAMED_USER_AGENT" = NAMED_USER_AGENT,
        "SWITCHYARD_METRIC_MAX_BUCKETS" = METRIC_MAX_BUCKETS,
        "SWITCHYARD_METRIC_MAX_SERIES" = METRIC_MAX_SERIES,
    );
    let magic: Vec<String> = MAGIC.iter().map(u8::to_string).collect();
    lines.insert(format!("magic {}", magic.join(" ")));
    lines.insert(format!("entry {ENTRY_SYMBOL}"));
    lines
}

#[test]
fn the_c_header_matches_the_rust_abi() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile_dir().join("layout");
    let compiled = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(here.join("include"))
        .arg(here.join("tests/c/layout.c"))
        .arg("-o")
        .arg(&out)
        .output()
        .expect("a C compiler (cc) to check the header with");
    assert!(
        compiled.status.success(),
        "the header does not compile:\n{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    let printed = Command::new(&out).output().expect("run the layout program");
    let c_side: BTreeSet<String> = String::from_utf8(printed.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let rust = rust_side();
    let only_c: Vec<_> = c_side.difference(&rust).collect();
    let only_rust: Vec<_> = rust.difference(&c_side).collect();
    assert!(
        only_c.is_empty() && only_rust.is_empty(),
        "switchyard_plugin.h and abi.rs disagree:\n  header says {only_c:#?}\n  abi.rs says {only_rust:#?}"
    );
}

/// A folder of this test's own under the target directory.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c-header");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
