/* Prints the size of every struct, the offset of every field and the value of every
 * constant of switchyard_plugin.h, one per line, for tests/c_header.rs to compare with the
 * Rust definitions. */
#include <stdio.h>
#include "switchyard_plugin.h"

#define SIZE(t) printf("size %s %zu\n", #t, sizeof(t))
#define FIELD(t, f) printf("offset %s.%s %zu\n", #t, #f, offsetof(t, f))
#define CONST(c) printf("const %s %lld\n", #c, (long long)(c))

int main(void) {
    SIZE(switchyard_bytes);
    FIELD(switchyard_bytes, ptr); FIELD(switchyard_bytes, len);
    SIZE(switchyard_header);
    FIELD(switchyard_header, name); FIELD(switchyard_header, value);
    SIZE(switchyard_request);
    FIELD(switchyard_request, method); FIELD(switchyard_request, target);
    FIELD(switchyard_request, version_minor); FIELD(switchyard_request, headers);
    FIELD(switchyard_request, headers_len); FIELD(switchyard_request, peer);
    FIELD(switchyard_request, body); FIELD(switchyard_request, protocol);
    FIELD(switchyard_request, arrival); FIELD(switchyard_request, may_block);
    FIELD(switchyard_request, tls); FIELD(switchyard_request, tls_version);
    FIELD(switchyard_request, tls_cipher); FIELD(switchyard_request, tls_alpn);
    FIELD(switchyard_request, tls_server_name); FIELD(switchyard_request, tls_client_subject);
    SIZE(switchyard_connection);
    FIELD(switchyard_connection, ctx); FIELD(switchyard_connection, read);
    FIELD(switchyard_connection, write); FIELD(switchyard_connection, write_vectored);
    FIELD(switchyard_connection, shutdown); FIELD(switchyard_connection, set_read_timeout);
    FIELD(switchyard_connection, buffered); FIELD(switchyard_connection, is_stopping);
    FIELD(switchyard_connection, fd); FIELD(switchyard_connection, set_write_timeout);
    FIELD(switchyard_connection, watch); FIELD(switchyard_connection, unwatch);
    FIELD(switchyard_connection, waker);
    SIZE(switchyard_waker);
    FIELD(switchyard_waker, ctx); FIELD(switchyard_waker, wake);
    FIELD(switchyard_waker, clone); FIELD(switchyard_waker, release);
    SIZE(switchyard_wants);
    FIELD(switchyard_wants, interest); FIELD(switchyard_wants, timer_ms);
    SIZE(switchyard_message_sink);
    FIELD(switchyard_message_sink, ctx); FIELD(switchyard_message_sink, set);
    SIZE(switchyard_response_sink);
    FIELD(switchyard_response_sink, ctx); FIELD(switchyard_response_sink, set_status);
    FIELD(switchyard_response_sink, add_header); FIELD(switchyard_response_sink, set_body);
    SIZE(switchyard_host);
    FIELD(switchyard_host, abi_minor); FIELD(switchyard_host, max_log_level);
    FIELD(switchyard_host, log_enabled); FIELD(switchyard_host, log);
    FIELD(switchyard_host, ctx); FIELD(switchyard_host, metric_declare);
    FIELD(switchyard_host, metric_series); FIELD(switchyard_host, access_line);
    FIELD(switchyard_host, access_line_named);
    SIZE(switchyard_exchange);
    FIELD(switchyard_exchange, peer); FIELD(switchyard_exchange, method);
    FIELD(switchyard_exchange, target); FIELD(switchyard_exchange, version);
    FIELD(switchyard_exchange, status); FIELD(switchyard_exchange, protocol);
    FIELD(switchyard_exchange, bytes_in); FIELD(switchyard_exchange, bytes_out);
    FIELD(switchyard_exchange, micros); FIELD(switchyard_exchange, reason);
    FIELD(switchyard_exchange, tls_version); FIELD(switchyard_exchange, tls_cipher);
    FIELD(switchyard_exchange, tls_alpn);
    SIZE(switchyard_request_names);
    FIELD(switchyard_request_names, host); FIELD(switchyard_request_names, origin);
    FIELD(switchyard_request_names, referer); FIELD(switchyard_request_names, user_agent);
    FIELD(switchyard_request_names, sent);
    SIZE(switchyard_metric);
    FIELD(switchyard_metric, kind); FIELD(switchyard_metric, name);
    FIELD(switchyard_metric, help); FIELD(switchyard_metric, labels);
    FIELD(switchyard_metric, labels_len); FIELD(switchyard_metric, buckets);
    FIELD(switchyard_metric, buckets_len); FIELD(switchyard_metric, scale);
    SIZE(switchyard_setting);
    FIELD(switchyard_setting, name); FIELD(switchyard_setting, default_value);
    FIELD(switchyard_setting, help);
    SIZE(switchyard_descriptor);
    FIELD(switchyard_descriptor, magic); FIELD(switchyard_descriptor, abi_minor);
    FIELD(switchyard_descriptor, size); FIELD(switchyard_descriptor, name);
    FIELD(switchyard_descriptor, build); FIELD(switchyard_descriptor, tokens);
    FIELD(switchyard_descriptor, tokens_len); FIELD(switchyard_descriptor, init);
    FIELD(switchyard_descriptor, negotiate); FIELD(switchyard_descriptor, serve);
    FIELD(switchyard_descriptor, drop_session); FIELD(switchyard_descriptor, start);
    FIELD(switchyard_descriptor, on_ready); FIELD(switchyard_descriptor, drop_conn);
    FIELD(switchyard_descriptor, settings); FIELD(switchyard_descriptor, settings_len);
    CONST(SWITCHYARD_METRIC_COUNTER); CONST(SWITCHYARD_METRIC_GAUGE);
    CONST(SWITCHYARD_METRIC_HISTOGRAM); CONST(SWITCHYARD_METRIC_MAX_LABELS);
    CONST(SWITCHYARD_NAMED_HOST); CONST(SWITCHYARD_NAMED_ORIGIN);
    CONST(SWITCHYARD_NAMED_REFERER); CONST(SWITCHYARD_NAMED_USER_AGENT);
    CONST(SWITCHYARD_METRIC_MAX_BUCKETS); CONST(SWITCHYARD_METRIC_MAX_SERIES);
    CONST(SWITCHYARD_ABI_MAJOR); CONST(SWITCHYARD_ABI_MINOR);
    CONST(SWITCHYARD_DECISION_ACCEPT); CONST(SWITCHYARD_DECISION_REJECT);
    CONST(SWITCHYARD_DECISION_DECLINE); CONST(SWITCHYARD_DECISION_ON_WORKER);
    CONST(SWITCHYARD_ARRIVAL_UPGRADE); CONST(SWITCHYARD_ARRIVAL_PRIOR_KNOWLEDGE);
    CONST(SWITCHYARD_V1_0_DECISION_ACCEPT); CONST(SWITCHYARD_V1_0_DECISION_REJECT);
    CONST(SWITCHYARD_V1_0_DECISION_DECLINE);
    CONST(SWITCHYARD_STATUS_OK); CONST(SWITCHYARD_STATUS_ERROR); CONST(SWITCHYARD_STATUS_PANIC);
    CONST(SWITCHYARD_READY_READABLE); CONST(SWITCHYARD_READY_WRITABLE);
    CONST(SWITCHYARD_READY_TIMER); CONST(SWITCHYARD_READY_STOPPING);
    CONST(SWITCHYARD_READY_WATCHED);
    CONST(SWITCHYARD_READY_RESUME); CONST(SWITCHYARD_READY_PEER_CLOSED);
    CONST(SWITCHYARD_READY_WATCHED_CLOSED); CONST(SWITCHYARD_READY_WOKEN);
    CONST(SWITCHYARD_WANT_READ); CONST(SWITCHYARD_WANT_WRITE); CONST(SWITCHYARD_WANT_CLOSE);
    CONST(SWITCHYARD_WANT_RESUME); CONST(SWITCHYARD_WANT_ABORT);
    CONST(SWITCHYARD_SHUTDOWN_READ); CONST(SWITCHYARD_SHUTDOWN_WRITE);
    CONST(SWITCHYARD_SHUTDOWN_BOTH);
    CONST(SWITCHYARD_LOG_OFF); CONST(SWITCHYARD_LOG_ERROR); CONST(SWITCHYARD_LOG_WARN);
    CONST(SWITCHYARD_LOG_INFO); CONST(SWITCHYARD_LOG_DEBUG); CONST(SWITCHYARD_LOG_TRACE);
    static const uint8_t magic[8] = SWITCHYARD_MAGIC;
    printf("magic");
    for (int i = 0; i < 8; i++) printf(" %u", magic[i]);
    printf("\n");
    printf("entry %s\n", SWITCHYARD_ENTRY_SYMBOL);
    return 0;
}
