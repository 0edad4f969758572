/*
 * A switchyard plugin written in C against include/switchyard_plugin.h, with no Rust in
 * it: token `c-echo`. It logs through the daemon, reports how many bytes the daemon read
 * ahead (which its reads return first), echoes, and says `bye` when the daemon stops.
 *
 * Built by the integration tests with the system's C compiler. Misuse variants, each of
 * which the daemon must refuse or contain: -DNULL_NEGOTIATE (a required entry left NULL),
 * -DNO_SERVE (no way to serve), -DBAD_DECISION (negotiate returns a code the ABI lacks).
 * -DVERSION_2 is a newer build that answers differently (its greeting starts `v2 `), for
 * the reload tests. `/reject` is refused with 403, a header and a body of its own. Between
 * this plugin and tests/c/evented_plugin.c, every function the header declares is called
 * from C: one whose C signature differs from the Rust one breaks a test.
 *
 * ABI 1.6: it declares its one setting, SWITCHYARD_C_ECHO_GREETING (a line said first),
 * and counts in three metrics of its own: connections (a counter), bytes echoed (a counter
 * with a label), and reads by size (a histogram), each cell bumped with a relaxed atomic.
 *
 * ABI 1.8: when a connection ends it writes an access line of its own through the daemon
 * (`"ECHO <target> C-ECHO/1" - proto=c-echo in=N out=N ...`), as an HTTP/2 plugin writes
 * one for each stream.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "switchyard_plugin.h"

#define BYTES(s) ((switchyard_bytes){(const uint8_t *)(s), sizeof(s) - 1})
/* The misuse variants leave some functions out of the descriptor. */
#define MAYBE_UNUSED __attribute__((unused))

static const switchyard_host *host;
static const switchyard_bytes tokens[] = {BYTES("c-echo")};
static int state; /* this plugin keeps no state; init must still return a non-NULL one */
static const switchyard_setting settings[] = {
    {BYTES("SWITCHYARD_C_ECHO_GREETING"), BYTES("none"), BYTES("a line said before the echo")},
};
static const char *greeting;
/* The metric cells the host lends (NULL under a host before 1.6: nothing is counted). */
static uint64_t *connections, *echoed, *reads;
static const uint64_t read_buckets[] = {16, 256, 4096};

static void count(uint64_t *cell, uint64_t n) {
    if (cell != NULL) {
        __atomic_fetch_add(cell, n, __ATOMIC_RELAXED);
    }
}

/* One read of `n` bytes, into the histogram: its bucket, then the sum. */
static void count_read(uint64_t n) {
    size_t bucket = 0;
    while (bucket < 3 && n > read_buckets[bucket]) {
        bucket++;
    }
    if (reads != NULL) {
        count(&reads[bucket], 1);
        count(&reads[4], n);
    }
}

/* Declares one family and looks up its one series; NULL when the host refuses either. */
static uint64_t *series(uint32_t kind, switchyard_bytes name, switchyard_bytes help,
                        const switchyard_bytes *label, const switchyard_bytes *value,
                        const uint64_t *buckets, size_t buckets_len) {
    switchyard_metric metric = {
        .kind = kind, .name = name, .help = help, .labels = label,
        .labels_len = label != NULL, .buckets = buckets, .buckets_len = buckets_len,
        .scale = 1,
    };
    uint32_t id = 0;
    if (host->metric_declare(host->ctx, &metric, &id, NULL) != SWITCHYARD_STATUS_OK) {
        return NULL;
    }
    return host->metric_series(host->ctx, id, value, value != NULL);
}

static void say(uint32_t level, const char *message) {
    switchyard_bytes text = {(const uint8_t *)message, strlen(message)};
    if (host != NULL && host->log_enabled(level, BYTES("c_echo"))) {
        host->log(level, BYTES("c_echo"), text);
    }
}

static void tell(const switchyard_message_sink *sink, const char *message) {
    if (sink != NULL) {
        sink->set(sink->ctx, (switchyard_bytes){(const uint8_t *)message, strlen(message)});
    }
}

/* The access line of one echo session (1.8), when the host takes it and its log is on;
 * with the request's Host and User-Agent where the host takes them (1.9). */
static void access_line(const switchyard_request *request, uint64_t echoed_bytes) {
    if (host->abi_minor < 8 || host->access_line == NULL ||
        !host->log_enabled(SWITCHYARD_LOG_INFO, BYTES("switchyard::access"))) {
        return;
    }
    switchyard_exchange exchange = {
        .peer = request->peer, .method = BYTES("ECHO"), .target = request->target,
        .version = BYTES("C-ECHO/1"), .status = 0, .protocol = BYTES("c-echo"),
        .bytes_in = echoed_bytes, .bytes_out = echoed_bytes, .micros = 1500,
        .reason = BYTES("the client closed"),
    };
    if (host->abi_minor < 9 || host->access_line_named == NULL) {
        host->access_line(&exchange);
        return;
    }
    switchyard_request_names names = {0};
    for (size_t i = 0; i < request->headers_len; i++) {
        const switchyard_header *field = &request->headers[i];
        if (field->name.len == 4 && strncasecmp((const char *)field->name.ptr, "host", 4) == 0) {
            names.host = field->value;
            names.sent |= SWITCHYARD_NAMED_HOST;
        } else if (field->name.len == 10 &&
                   strncasecmp((const char *)field->name.ptr, "user-agent", 10) == 0) {
            names.user_agent = field->value;
            names.sent |= SWITCHYARD_NAMED_USER_AGENT;
        }
    }
    host->access_line_named(&exchange, &names);
}

static int32_t write_all(const switchyard_connection *conn, const uint8_t *buf, size_t len) {
    while (len > 0) {
        size_t n = 0;
        int32_t rc = conn->write(conn->ctx, buf, len, &n);
        if (rc != 0) {
            return rc;
        }
        buf += n;
        len -= n;
    }
    return 0;
}

static int32_t init(const switchyard_host *h, void **out, const switchyard_message_sink *error) {
    host = h;
    *out = &state;
    greeting = getenv("SWITCHYARD_C_ECHO_GREETING");
    if (h->abi_minor >= 6 && h->metric_declare != NULL && h->metric_series != NULL) {
        static const switchyard_bytes direction = BYTES("direction");
        static const switchyard_bytes back = BYTES("back");
        connections = series(SWITCHYARD_METRIC_COUNTER, BYTES("connections_total"),
                             BYTES("Connections echoed."), NULL, NULL, NULL, 0);
        echoed = series(SWITCHYARD_METRIC_COUNTER, BYTES("bytes_total"),
                        BYTES("Bytes echoed back."), &direction, &back, NULL, 0);
        reads = series(SWITCHYARD_METRIC_HISTOGRAM, BYTES("read_bytes"),
                       BYTES("Reads by size, in bytes."), NULL, NULL, read_buckets, 3);
        if (connections == NULL || echoed == NULL || reads == NULL) {
            tell(error, "the host refused a metric");
            return SWITCHYARD_STATUS_ERROR;
        }
    }
    say(SWITCHYARD_LOG_INFO, "c-echo: ready");
    return SWITCHYARD_STATUS_OK;
}

MAYBE_UNUSED static int32_t negotiate(const void *st, const switchyard_request *request,
                         const switchyard_response_sink *response, void **session,
                         const switchyard_message_sink *error) {
    (void)st, (void)error;
#ifdef BAD_DECISION
    return 7;
#endif
    static const char reject[] = "/reject";
    if (request->target.len == sizeof reject - 1 &&
        memcmp(request->target.ptr, reject, sizeof reject - 1) == 0) {
        response->set_status(response->ctx, 403);
        response->add_header(response->ctx, BYTES("X-From"), BYTES("c"));
        response->set_body(response->ctx, BYTES("not from C\n"));
        return SWITCHYARD_DECISION_REJECT;
    }
    *session = NULL;
    return SWITCHYARD_DECISION_ACCEPT;
}

MAYBE_UNUSED static int32_t serve(const void *st, void *session, const switchyard_request *request,
                     const switchyard_connection *conn, const switchyard_message_sink *error) {
    (void)st, (void)session;
    char line[256];
    size_t ahead = conn->buffered(conn->ctx);
    snprintf(line, sizeof line, "c-echo: serving %.*s, %zu bytes read ahead",
             (int)request->target.len, (const char *)request->target.ptr, ahead);
    say(SWITCHYARD_LOG_INFO, line);
    /* No effect here but to show it is callable: the daemon's default is no read time-out. */
    conn->set_read_timeout(conn->ctx, 0);
    count(connections, 1);
    if (greeting != NULL) {
        write_all(conn, (const uint8_t *)greeting, strlen(greeting));
        write_all(conn, (const uint8_t *)"\n", 1);
    }
#ifdef VERSION_2
    const char *prefix = "v2 ";
#else
    const char *prefix = "";
#endif
    int len = snprintf(line, sizeof line, "buffered=%zu\n", ahead);
    /* The greeting in two pieces, one write: the vectored call. */
    switchyard_bytes parts[2] = {{(const uint8_t *)prefix, strlen(prefix)},
                                 {(const uint8_t *)line, (size_t)len}};
    size_t total = parts[0].len + parts[1].len, n = 0;
    if (conn->write_vectored(conn->ctx, parts, 2, &n) != 0 || n != total) {
        tell(error, "write failed");
        return SWITCHYARD_STATUS_ERROR;
    }
    uint8_t buf[4096];
    uint64_t echoed_bytes = 0;
    for (;;) {
        size_t n = 0;
        if (conn->read(conn->ctx, buf, sizeof buf, &n) != 0) {
            tell(error, "read failed");
            return SWITCHYARD_STATUS_ERROR;
        }
        if (n == 0) {
            if (conn->is_stopping(conn->ctx)) {
                write_all(conn, (const uint8_t *)"bye\n", 4);
            }
            conn->shutdown(conn->ctx, SWITCHYARD_SHUTDOWN_WRITE);
            access_line(request, echoed_bytes);
            return SWITCHYARD_STATUS_OK;
        }
        count_read(n);
        if (write_all(conn, buf, n) != 0) {
            tell(error, "write failed");
            return SWITCHYARD_STATUS_ERROR;
        }
        count(echoed, n);
        echoed_bytes += n;
    }
}

static const switchyard_descriptor descriptor = {
    .magic = SWITCHYARD_MAGIC,
#ifdef AS_ABI_MINOR /* a plugin built against an older header */
    .abi_minor = AS_ABI_MINOR,
#else
    .abi_minor = SWITCHYARD_ABI_MINOR,
#endif
    .size = sizeof(switchyard_descriptor),
    .name = BYTES("c-echo"),
    .build = BYTES("c-echo 1.0, written in C"),
    .tokens = tokens,
    .tokens_len = 1,
    .init = init,
#ifndef NULL_NEGOTIATE
    .negotiate = negotiate,
#endif
#ifndef NO_SERVE
    .serve = serve,
#endif
    .settings = settings,
    .settings_len = 1,
};

const switchyard_descriptor *switchyard_plugin_v1(void) {
    return &descriptor;
}
