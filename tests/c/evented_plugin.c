/*
 * A readiness-driven switchyard plugin in C (ABI 1.1 and later): token `c-ev-echo`. Its
 * connections run on the daemon's event loops, with no thread of their own: on_ready
 * reads what is there, echoes it, keeps what the socket does not take and reads nothing
 * more until that is written; on the daemon's stop it says `bye` and closes. Before its
 * greeting it has the loop watch a pipe of its own (ABI 1.2) and waits for it, and (1.10)
 * wakes itself through a clone of its waker, releases both handles, and waits for that too.
 *
 * Built by the integration tests with the system's C compiler. -DOLD_H2C makes it a 1.1
 * plugin that claims the `h2c` token: the daemon must never hand it a connection that
 * began with the HTTP/2 preface (prior knowledge), which it cannot tell from an upgrade.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "switchyard_plugin.h"

#define BYTES(s) ((switchyard_bytes){(const uint8_t *)(s), sizeof(s) - 1})

#ifdef OLD_H2C
static const switchyard_bytes tokens[] = {BYTES("h2c")};
#define MINOR 1
#else
static const switchyard_bytes tokens[] = {BYTES("c-ev-echo")};
#define MINOR SWITCHYARD_ABI_MINOR
#endif
static int state;

/* One connection: output the socket has not taken yet, and a pipe of its own that the
 * event loop watches until its one byte is read (the greeting waits for that). */
typedef struct conn {
    uint8_t owed[4096];
    size_t owed_len;
    int started;
    int greeted;
    int woken;
    int pipe[2];
} conn;

static int32_t init(const switchyard_host *host, void **out, const switchyard_message_sink *error) {
    (void)host, (void)error;
    *out = &state;
    return SWITCHYARD_STATUS_OK;
}

static int32_t negotiate(const void *st, const switchyard_request *request,
                         const switchyard_response_sink *response, void **session,
                         const switchyard_message_sink *error) {
    (void)st, (void)error;
    response->add_header(response->ctx, BYTES("X-Arrival"),
                         request->arrival == SWITCHYARD_ARRIVAL_UPGRADE ? BYTES("upgrade")
                                                                        : BYTES("other"));
    *session = NULL;
    return SWITCHYARD_DECISION_ACCEPT;
}

static int32_t start(const void *st, void *session, const switchyard_request *request,
                     void **out, const switchyard_message_sink *error) {
    (void)st, (void)session, (void)request, (void)error;
    conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        return SWITCHYARD_STATUS_ERROR;
    }
    if (pipe(c->pipe) != 0) {
        free(c);
        return SWITCHYARD_STATUS_ERROR;
    }
    *out = c;
    return SWITCHYARD_STATUS_OK;
}

/* Writes what is owed; 0 when all of it went, EAGAIN when some waits, or an error. */
static int32_t flush(conn *c, const switchyard_connection *io) {
    while (c->owed_len > 0) {
        size_t n = 0;
        int32_t rc = io->write(io->ctx, c->owed, c->owed_len, &n);
        if (rc != 0) {
            return rc;
        }
        memmove(c->owed, c->owed + n, c->owed_len - n);
        c->owed_len -= n;
    }
    return 0;
}

static int32_t on_ready(const void *st, void *raw, const switchyard_connection *io,
                        uint32_t events, switchyard_wants *wants,
                        const switchyard_message_sink *error) {
    (void)st, (void)error;
    conn *c = raw;
    if (!c->started) {
        /* First call: watch the pipe, and make it readable. */
        c->started = 1;
        io->set_write_timeout(io->ctx, 30000);
        if (io->watch(io->ctx, c->pipe[0]) != 0 || write(c->pipe[1], "!", 1) != 1) {
            return SWITCHYARD_STATUS_ERROR;
        }
#ifdef OLD_H2C
        c->woken = 1;
#else
        /* A waker, woken through a clone; both handles released: the wake stays asked. */
        switchyard_waker waker;
        if (io->waker(io->ctx, &waker) != 0) {
            return SWITCHYARD_STATUS_ERROR;
        }
        const void *clone = waker.clone(waker.ctx);
        int32_t woke = waker.wake(clone);
        waker.release(waker.ctx);
        waker.release(clone);
        if (woke != 0) {
            return SWITCHYARD_STATUS_ERROR;
        }
#endif
        wants->interest = 0;
        wants->timer_ms = 10000; /* the watch and the wake bring the next calls */
        return SWITCHYARD_STATUS_OK;
    }
    if (events & SWITCHYARD_READY_WOKEN) {
        c->woken = 1;
    }
    if (c->pipe[0] >= 0 && (events & SWITCHYARD_READY_WATCHED)) {
        char byte;
        if (read(c->pipe[0], &byte, 1) != 1 || io->unwatch(io->ctx, c->pipe[0]) != 0) {
            return SWITCHYARD_STATUS_ERROR;
        }
        close(c->pipe[0]);
        close(c->pipe[1]);
        c->pipe[0] = c->pipe[1] = -1;
    }
    if (!c->greeted) {
        if (c->pipe[0] >= 0 || !c->woken) {
            wants->interest = 0;
            wants->timer_ms = 10000;
            return SWITCHYARD_STATUS_OK;
        }
        c->greeted = 1;
        /* The greeting in two pieces, one write: the vectored call. */
        switchyard_bytes parts[2] = {BYTES("c-ev-"), BYTES("echo\n")};
        size_t n = 0;
        if (io->write_vectored(io->ctx, parts, 2, &n) != 0 || n != 10) {
            return SWITCHYARD_STATUS_ERROR;
        }
    }
    if (events & SWITCHYARD_READY_STOPPING) {
        memcpy(c->owed + c->owed_len, "bye\n", 4);
        c->owed_len += 4;
        flush(c, io);
        wants->interest = SWITCHYARD_WANT_CLOSE;
        return SWITCHYARD_STATUS_OK;
    }
    for (;;) {
        int32_t rc = flush(c, io);
        if (rc == EAGAIN) {
            wants->interest = SWITCHYARD_WANT_WRITE; /* read nothing until it is written */
            return SWITCHYARD_STATUS_OK;
        }
        if (rc != 0) {
            return SWITCHYARD_STATUS_ERROR;
        }
        size_t n = 0;
        rc = io->read(io->ctx, c->owed, sizeof c->owed, &n);
        if (rc == EAGAIN) {
            wants->interest = SWITCHYARD_WANT_READ;
            return SWITCHYARD_STATUS_OK;
        }
        if (rc != 0 || n == 0) {
            wants->interest = SWITCHYARD_WANT_CLOSE;
            return SWITCHYARD_STATUS_OK;
        }
        c->owed_len = n; /* echoed on the next turn of the loop */
    }
}

static void drop_conn(const void *st, void *raw) {
    (void)st;
    conn *c = raw;
    if (c->pipe[0] >= 0) {
        close(c->pipe[0]);
        close(c->pipe[1]);
    }
    free(c);
}

static const switchyard_descriptor descriptor = {
    .magic = SWITCHYARD_MAGIC,
    .abi_minor = MINOR,
    .size = sizeof(switchyard_descriptor),
    .name = BYTES("c-evented"),
    .build = BYTES("c-evented 1.0, written in C"),
    .tokens = tokens,
    .tokens_len = 1,
    .init = init,
    .negotiate = negotiate,
    .start = start,
    .on_ready = on_ready,
    .drop_conn = drop_conn,
};

const switchyard_descriptor *switchyard_plugin_v1(void) {
    return &descriptor;
}
