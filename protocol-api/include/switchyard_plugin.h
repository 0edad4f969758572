/*
 * switchyard_plugin.h: the switchyard plugin ABI, version 1.10, for plugins written in C
 * (or any language that speaks the C ABI).
 *
 * The same contract as protocol-api's `abi` module (protocol-api/src/abi.rs), item for
 * item; protocol-api's tests compile this header and compare every size, field offset and
 * constant with the Rust definitions, so the two cannot drift apart.
 *
 * A plugin is a shared library exporting
 *
 *     const switchyard_descriptor *switchyard_plugin_v1(void);
 *
 * returning a descriptor that lives as long as the library. Rules both sides keep:
 * - Structs only grow at the end within a major version: `size` says how much of the
 *   descriptor the plugin filled; `switchyard_host.abi_minor` says which host fields exist.
 * - Borrowed bytes (`switchyard_bytes`) are valid only during the call they are passed to.
 * - Whoever allocates frees: plugin state and sessions go back only to the plugin.
 * - A connection's functions are called only during the call that lent it, from one thread
 *   at a time. Plugin state is shared by every thread running plugin code.
 * - Function pointers marked "optional" may be NULL; the daemon refuses a plugin whose
 *   required ones are NULL, naming the field.
 */
#ifndef SWITCHYARD_PLUGIN_H
#define SWITCHYARD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SWITCHYARD_ENTRY_SYMBOL "switchyard_plugin_v1"
#define SWITCHYARD_ABI_MAJOR 1
#define SWITCHYARD_ABI_MINOR 10
/* The first 8 bytes of every descriptor: "SWYARD", 0x01, 0x00. */
#define SWITCHYARD_MAGIC { 'S', 'W', 'Y', 'A', 'R', 'D', 0x01, 0x00 }

/* negotiate: decisions (ABI 1.1; 1.0 used 0, 1, 2, shared with the statuses). */
#define SWITCHYARD_DECISION_ACCEPT 0x100
#define SWITCHYARD_DECISION_REJECT 0x101
#define SWITCHYARD_DECISION_DECLINE 0x102
/* (1.2, readiness plugins) ask again on a worker thread, where may_block is 1. */
#define SWITCHYARD_DECISION_ON_WORKER 0x103
#define SWITCHYARD_V1_0_DECISION_ACCEPT 0
#define SWITCHYARD_V1_0_DECISION_REJECT 1
#define SWITCHYARD_V1_0_DECISION_DECLINE 2
/* init, serve, start, on_ready: statuses; any call: a caught panic. */
#define SWITCHYARD_STATUS_OK 0
#define SWITCHYARD_STATUS_ERROR 1
#define SWITCHYARD_STATUS_PANIC (-1)

/* on_ready `events` bits. */
#define SWITCHYARD_READY_READABLE 1u
#define SWITCHYARD_READY_WRITABLE 2u
#define SWITCHYARD_READY_TIMER 4u
#define SWITCHYARD_READY_STOPPING 8u
#define SWITCHYARD_READY_WATCHED 16u  /* 1.2: a watched descriptor may move */
#define SWITCHYARD_READY_RESUME 32u  /* 1.3: the call SWITCHYARD_WANT_RESUME asked for */
#define SWITCHYARD_READY_PEER_CLOSED 64u  /* 1.3: the peer shut its side or the connection failed */
#define SWITCHYARD_READY_WATCHED_CLOSED 128u  /* 1.4: with READY_WATCHED: a watched descriptor's peer shut its side or it failed;
                                                  until then a short read of a watched stream socket or pipe drained it. Latch it;
                                                  it names no descriptor and may be spurious: read to the end, do not assume the peer gone */
#define SWITCHYARD_READY_WOKEN 256u  /* 1.10: a waker of this connection was woken since the last call (one call for any number of wakes) */
/* switchyard_wants.interest bits. */
#define SWITCHYARD_WANT_READ 1u
#define SWITCHYARD_WANT_WRITE 2u
#define SWITCHYARD_WANT_CLOSE 4u
#define SWITCHYARD_WANT_RESUME 8u  /* 1.3: call again soon, work is in hand (a budget spent) */
#define SWITCHYARD_WANT_ABORT 16u  /* 1.7: with WANT_CLOSE: reset, dropping what the peer has not taken */

/* switchyard_connection.shutdown `how`. */
#define SWITCHYARD_SHUTDOWN_READ 0u
#define SWITCHYARD_SHUTDOWN_WRITE 1u
#define SWITCHYARD_SHUTDOWN_BOTH 2u

/* Log levels: 0 off (never a record's level), then error ... trace. */
#define SWITCHYARD_LOG_OFF 0u
#define SWITCHYARD_LOG_ERROR 1u
#define SWITCHYARD_LOG_WARN 2u
#define SWITCHYARD_LOG_INFO 3u
#define SWITCHYARD_LOG_DEBUG 4u
#define SWITCHYARD_LOG_TRACE 5u

/* A borrowed byte slice, valid only during the call it is passed to. */
typedef struct switchyard_bytes {
    const uint8_t *ptr;
    size_t len;
} switchyard_bytes;

/* One request header as received. */
typedef struct switchyard_header {
    switchyard_bytes name;
    switchyard_bytes value;
} switchyard_header;

/* The request that asked to switch, lent to negotiate, serve and start. */
typedef struct switchyard_request {
    switchyard_bytes method;
    switchyard_bytes target;       /* as sent, UTF-8 */
    uint32_t version_minor;        /* 1 */
    const switchyard_header *headers;
    size_t headers_len;
    switchyard_bytes peer;         /* "ip:port" */
    switchyard_bytes body;         /* the whole body in negotiate and start; empty in serve */
    switchyard_bytes protocol;     /* the Upgrade product being negotiated */
    uint32_t arrival;              /* (1.2) SWITCHYARD_ARRIVAL_*: how the connection came */
    uint32_t may_block;            /* (1.2) 1 on a worker thread (negotiate may block) */
    /* (1.5) 1 when the connection came over TLS, which the host terminates: reads and
     * writes through the connection are plaintext; its fd carries ciphertext, never to be
     * read, written or spliced by the plugin (socket options are fine). 0: cleartext. */
    uint32_t tls;
    switchyard_bytes tls_version;     /* (1.5) "TLSv1.3" or "TLSv1.2" */
    switchyard_bytes tls_cipher;      /* (1.5) the cipher suite's IANA name */
    switchyard_bytes tls_alpn;        /* (1.5) "h2", "http/1.1", or empty */
    switchyard_bytes tls_server_name; /* (1.5) the name asked for (SNI), or empty */
    switchyard_bytes tls_client_subject; /* (1.5) the verified client certificate's subject
                                          * (RFC 4514), or empty: none presented */
} switchyard_request;

/* switchyard_request.arrival: by an HTTP/1.1 Upgrade (the host sends the 101), or with the
 * HTTP/2 preface, which the host read (no 101; method "PRI", target "*", protocol "h2c"). */
#define SWITCHYARD_ARRIVAL_UPGRADE 0
#define SWITCHYARD_ARRIVAL_PRIOR_KNOWLEDGE 1

/*
 * (1.10) A readiness connection's waker (switchyard_connection.waker): any thread may keep it
 * past the call, and its `wake` has the connection's event loop call on_ready with
 * SWITCHYARD_READY_WOKEN. wake returns 0, or ESRCH once the connection ended (it then does
 * nothing; a wake racing the end may answer 0 and bring no call). Not from signal handlers. `clone` returns the ctx of another handle; each handle is ended once with
 * `release`. The functions are the host's and thread-safe.
 */
typedef struct switchyard_waker {
    const void *ctx;
    int32_t (*wake)(const void *ctx);
    const void *(*clone)(const void *ctx);
    void (*release)(const void *ctx);
} switchyard_waker;

/*
 * The switched connection. I/O functions return 0 or an errno value, `*n` the count; a
 * read of 0 means end of stream; reads return the bytes the client sent early first.
 * Lent to serve: blocking. Lent to on_ready: non-blocking (EAGAIN when nothing moves).
 */
typedef struct switchyard_connection {
    void *ctx;
    int32_t (*read)(void *ctx, uint8_t *buf, size_t len, size_t *n);
    int32_t (*write)(void *ctx, const uint8_t *buf, size_t len, size_t *n);
    int32_t (*write_vectored)(void *ctx, const switchyard_bytes *bufs, size_t count, size_t *n);
    int32_t (*shutdown)(void *ctx, uint32_t how);
    int32_t (*set_read_timeout)(void *ctx, uint64_t millis); /* blocking only */
    size_t (*buffered)(void *ctx);
    uint8_t (*is_stopping)(void *ctx);
    int32_t fd;                    /* lent: never close it */
    /* ABI 1.1 (when the host's abi_minor >= 1): 0 restores the daemon's default. */
    int32_t (*set_write_timeout)(void *ctx, uint64_t millis);
    /* ABI 1.2, readiness connections: watch a descriptor of the plugin's own (both
     * directions, edge-triggered: on SWITCHYARD_READY_WATCHED try it until EAGAIN), and stop
     * watching it (before closing it). */
    int32_t (*watch)(void *ctx, int32_t fd);
    int32_t (*unwatch)(void *ctx, int32_t fd);
    /* ABI 1.10, readiness connections: fills *waker with a waker the plugin owns (EINVAL on a
     * blocking connection). Every call wakes the same connection: keep one, clone it. */
    int32_t (*waker)(void *ctx, switchyard_waker *waker);
} switchyard_connection;

/* What on_ready wants next. */
typedef struct switchyard_wants {
    uint32_t interest;             /* SWITCHYARD_WANT_* bits, or SWITCHYARD_WANT_CLOSE */
    uint64_t timer_ms;             /* 0: no timer; each answer replaces the previous */
} switchyard_wants;

/* Receives an error or panic message, by copying it. */
typedef struct switchyard_message_sink {
    void *ctx;
    void (*set)(void *ctx, switchyard_bytes message);
} switchyard_message_sink;

/* Receives the extra headers of a 101, or a rejection's status, headers and body. */
typedef struct switchyard_response_sink {
    void *ctx;
    void (*set_status)(void *ctx, uint16_t status);
    void (*add_header)(void *ctx, switchyard_bytes name, switchyard_bytes value);
    void (*set_body)(void *ctx, switchyard_bytes body);
} switchyard_response_sink;

/* (1.6) Metric kinds, limits. */
#define SWITCHYARD_METRIC_COUNTER 0   /* one cell: atomic add */
#define SWITCHYARD_METRIC_GAUGE 1     /* one cell, an int64_t in two's complement: add, sub */
#define SWITCHYARD_METRIC_HISTOGRAM 2 /* buckets_len + 2 cells: a count per bucket (not
                                       * cumulative, +Inf last), then the sum */
#define SWITCHYARD_METRIC_MAX_LABELS 4
#define SWITCHYARD_METRIC_MAX_BUCKETS 32
#define SWITCHYARD_METRIC_MAX_SERIES 1000

/* (1.6) One metric family, lent to metric_declare (the host copies it). Rendered in
 * /metrics as switchyard_<plugin>_<name>. */
typedef struct switchyard_metric {
    uint32_t kind;                  /* SWITCHYARD_METRIC_* */
    switchyard_bytes name;          /* [a-z_][a-z0-9_]* */
    switchyard_bytes help;          /* one line */
    const switchyard_bytes *labels; /* label names, at most SWITCHYARD_METRIC_MAX_LABELS */
    size_t labels_len;
    const uint64_t *buckets;        /* histograms: upper bounds, rising, in the plugin's unit */
    size_t buckets_len;
    uint64_t scale;                 /* units per rendered unit (1000000: microseconds shown
                                     * as seconds); 0 or 1: as they are */
} switchyard_metric;

/* (1.6) One setting (environment variable) the plugin reads, listed by --help and --check. */
typedef struct switchyard_setting {
    switchyard_bytes name;
    switchyard_bytes default_value; /* what applies when unset, in words or as a value */
    switchyard_bytes help;          /* one line */
} switchyard_setting;

/* (1.8) One exchange a plugin served inside its connection (an HTTP/2 stream), for the
 * host's access log (switchyard_host.access_line). Lent for the call; texts UTF-8. */
typedef struct switchyard_exchange {
    switchyard_bytes peer;     /* "address:port", as switchyard_request.peer */
    switchyard_bytes method;   /* "POST" */
    switchyard_bytes target;   /* as the client sent it; the host cuts token= values */
    switchyard_bytes version;  /* "HTTP/2.0" */
    uint32_t status;           /* 0: none sent (logged "-") */
    switchyard_bytes protocol; /* the plugin's token, "h2c" */
    uint64_t bytes_in;         /* the exchange's bytes from and to the client */
    uint64_t bytes_out;
    uint64_t micros;           /* from its request's first byte to its end */
    switchyard_bytes reason;   /* why it ended otherwise than with its answer; empty: none */
    switchyard_bytes tls_version; /* as switchyard_request's; empty: not over TLS */
    switchyard_bytes tls_cipher;
    switchyard_bytes tls_alpn;    /* empty: none agreed */
} switchyard_exchange;

/* (1.9) The request fields an exchange's access line names
 * (switchyard_host.access_line_named), each as the client sent it; the host reads a field
 * only where its SWITCHYARD_NAMED_* bit is set in `sent`. Lent for the call. */
typedef struct switchyard_request_names {
    switchyard_bytes host;       /* Host, or HTTP/2's :authority */
    switchyard_bytes origin;
    switchyard_bytes referer;    /* the host cuts token= values */
    switchyard_bytes user_agent;
    uint32_t sent;
} switchyard_request_names;

#define SWITCHYARD_NAMED_HOST 1u
#define SWITCHYARD_NAMED_ORIGIN 2u
#define SWITCHYARD_NAMED_REFERER 4u
#define SWITCHYARD_NAMED_USER_AGENT 8u

/* What the host offers a plugin; lives as long as the process. */
typedef struct switchyard_host {
    uint32_t abi_minor;
    uint32_t max_log_level;
    uint8_t (*log_enabled)(uint32_t level, switchyard_bytes target);
    void (*log)(uint32_t level, switchyard_bytes target, switchyard_bytes message);
    /* ABI 1.6 (when abi_minor >= 6): this plugin's own state for the metric functions. */
    void *ctx;
    /* Declares a family and writes its id; SWITCHYARD_STATUS_ERROR with the reason in
     * `error` when its names or buckets are refused. The same shape declared again (by a
     * later generation after a reload) gets the same id and cells: counters carry over. */
    int32_t (*metric_declare)(void *ctx, const switchyard_metric *metric, uint32_t *id,
                              const switchyard_message_sink *error);
    /* The cells of family `id`'s series for these label values (one per label name):
     * 8-byte aligned uint64_t, kept for the life of the process, to be updated only with
     * relaxed atomics (__atomic_fetch_add(cell, n, __ATOMIC_RELAXED)). NULL for an unknown
     * id, a wrong count of values, or past SWITCHYARD_METRIC_MAX_SERIES series. Look a
     * series up once and keep the pointer: this call takes a lock. */
    uint64_t *(*metric_series)(void *ctx, uint32_t id, const switchyard_bytes *values,
                               size_t values_len);
    /* ABI 1.8 (when abi_minor >= 8): writes one access line for `exchange` as the host
     * writes its own, if its access log is on (ask log_enabled(4, "switchyard::access")
     * first and build nothing when it is off). Callable from any thread. */
    void (*access_line)(const switchyard_exchange *exchange);
    /* ABI 1.9 (when abi_minor >= 9): access_line, with the request's named fields. */
    void (*access_line_named)(const switchyard_exchange *exchange,
                              const switchyard_request_names *names);
} switchyard_host;

typedef int32_t (*switchyard_init_fn)(const switchyard_host *host, void **state,
                                      const switchyard_message_sink *error);
typedef int32_t (*switchyard_negotiate_fn)(const void *state, const switchyard_request *request,
                                           const switchyard_response_sink *response,
                                           void **session, const switchyard_message_sink *error);
typedef int32_t (*switchyard_serve_fn)(const void *state, void *session,
                                       const switchyard_request *request,
                                       const switchyard_connection *connection,
                                       const switchyard_message_sink *error);
typedef void (*switchyard_drop_session_fn)(const void *state, void *session);
typedef int32_t (*switchyard_start_fn)(const void *state, void *session,
                                       const switchyard_request *request, void **conn,
                                       const switchyard_message_sink *error);
typedef int32_t (*switchyard_on_ready_fn)(const void *state, void *conn,
                                          const switchyard_connection *connection,
                                          uint32_t events, switchyard_wants *wants,
                                          const switchyard_message_sink *error);
typedef void (*switchyard_drop_conn_fn)(const void *state, void *conn);

/*
 * The descriptor. Set `serve` (blocking, a worker thread per connection), or all three of
 * `start`, `on_ready`, `drop_conn` (readiness-driven, on the daemon's event loops).
 */
typedef struct switchyard_descriptor {
    uint8_t magic[8];              /* SWITCHYARD_MAGIC */
    uint32_t abi_minor;            /* SWITCHYARD_ABI_MINOR you built against */
    uint32_t size;                 /* sizeof(switchyard_descriptor) */
    switchyard_bytes name;
    switchyard_bytes build;
    const switchyard_bytes *tokens; /* the Upgrade tokens, lower-case */
    size_t tokens_len;
    switchyard_init_fn init;                 /* required; sets a non-NULL *state */
    switchyard_negotiate_fn negotiate;       /* required */
    switchyard_serve_fn serve;               /* NULL when readiness-driven */
    switchyard_drop_session_fn drop_session; /* optional */
    /* ABI 1.1 */
    switchyard_start_fn start;
    switchyard_on_ready_fn on_ready;
    switchyard_drop_conn_fn drop_conn;
    /* ABI 1.6 */
    const switchyard_setting *settings; /* the settings the plugin reads, static data */
    size_t settings_len;
} switchyard_descriptor;

#ifdef __cplusplus
}
#endif

#endif /* SWITCHYARD_PLUGIN_H */
