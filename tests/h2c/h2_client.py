"""HTTP/2 through switchyard with Python's `h2` on raw sockets: the upgrade (SETTINGS
first, stream 1 answered, PING acked, a second request on stream 3), prior knowledge,
upgrades that must not switch, bad frames and their errors, per-stream 404/502/504, and
the daemon stopping (GOAWAY, the stream in flight finishes).
Usage: h2_client.py HOST:PORT DAEMON_PID
With H2C_WEB_HOST set, /web/ reaches its HTTP/1.1 backend through a second daemon, whose
Host is then that value (the first daemon's route authority), not the client's."""
import json
import os
import signal
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

host, port = sys.argv[1].rsplit(":", 1)
ADDR = (host, int(port))
DAEMON = int(sys.argv[2])
checks = 0


def check(condition, what):
    global checks
    if not condition:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)
    checks += 1


def connect():
    sock = socket.create_connection(ADDR, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_head(sock):
    """Reads an HTTP/1.1 response head; returns (status, head text, bytes after it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else 0
    return status, head.decode("latin-1"), rest


def frames_of(data):
    """(type, flags, stream, payload) of each whole frame in `data`."""
    out = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        if len(data) < 9 + length:
            break
        out.append((data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF, data[9 : 9 + length]))
        data = data[9 + length :]
    return out


class Client:
    """An h2 client connection, after an upgrade or with prior knowledge."""

    def __init__(self, sock, conn, pending=b""):
        self.sock, self.conn = sock, conn
        self.responses = {}
        self.events = []
        self.buffer = b""
        if pending:
            self.feed(pending)

    def send(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def feed(self, data):
        # A frame at a time: this client library refuses frames after a GOAWAY (a server's
        # graceful shutdown may PING after its first GOAWAY, as RFC 9113 §6.8 allows), and
        # the events before such a frame must not be lost with it.
        self.buffer += data
        while len(self.buffer) >= 9:
            end = 9 + int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < end:
                break
            frame, self.buffer = self.buffer[:end], self.buffer[end:]
            try:
                self.handle(self.conn.receive_data(frame))
            except h2.exceptions.ProtocolError:
                if any(isinstance(e, h2.events.ConnectionTerminated) for e in self.events):
                    return
                raise

    def handle(self, events):
        for event in events:
            self.events.append(event)
            stream = getattr(event, "stream_id", None)
            if isinstance(event, h2.events.ResponseReceived):
                self.responses.setdefault(stream, {})["headers"] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                r = self.responses.setdefault(stream, {})
                r["body"] = r.get("body", b"") + event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, h2.events.StreamEnded):
                self.responses.setdefault(stream, {})["ended"] = True
            elif isinstance(event, h2.events.StreamReset):
                self.responses.setdefault(stream, {})["reset"] = event.error_code
            elif isinstance(event, h2.events.TrailersReceived):
                self.responses.setdefault(stream, {})["trailers"] = dict(event.headers)
        self.send()

    def pump_until(self, done, seconds=10):
        deadline = time.time() + seconds
        while not done():
            if time.time() > deadline:
                return False
            self.sock.settimeout(max(0.01, deadline - time.time()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            if not data:
                return done()
            self.feed(data)
        return True

    def get(self, path, stream=None):
        stream = stream or self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream,
            [(":method", "GET"), (":scheme", "http"), (":authority", "test.example"), (":path", path)],
            end_stream=True,
        )
        self.send()
        return stream

    def finished(self, stream):
        r = self.responses.get(stream, {})
        return r.get("ended") or "reset" in r

    def status(self, stream):
        return int(self.responses[stream]["headers"][b":status"])

    def json(self, stream):
        return json.loads(self.responses[stream]["body"])


def upgrade(path="/web/x", method="GET", body=b"", settings=None, extra=""):
    """Sends an upgrade request; returns (status, head, Client or None)."""
    sock = connect()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    value = conn.initiate_upgrade_connection() if settings is None else None
    lines = [f"{method} {path} HTTP/1.1", "Host: test.example", "Upgrade: h2c"]
    if settings is None:
        lines += ["Connection: Upgrade, HTTP2-Settings", f"HTTP2-Settings: {value.decode()}"]
    else:
        lines += settings
    if body:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + extra + "\r\n\r\n").encode() + body
    sock.sendall(head)
    status, text, rest = read_head(sock)
    if status != 101:
        sock.close()
        return status, text, None
    while len(rest) < 9:  # the server's first frame header, to look at
        rest += sock.recv(65536)
    client = Client(sock, conn)
    client.first = rest
    client.send()  # the client's preface and SETTINGS
    client.feed(rest)
    return status, text, client


def prior_knowledge():
    sock = connect()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    client = Client(sock, conn)
    client.send()
    return client


# -- The upgrade: 101, the server's SETTINGS first, stream 1 answered, PING, stream 3. ----
status, head, client = upgrade()
check(status == 101, f"upgrade switched ({head!r})")
check("upgrade: h2c" in head.lower(), "the 101 names h2c")
first = frames_of(client.first)
check(first and first[0][0] == 0x4 and not first[0][1] & 0x1, f"the server's first frame is SETTINGS ({first[:1]})")
check(client.pump_until(lambda: client.finished(1)), "stream 1 (the upgrade request) is answered")
check(client.status(1) == 200, "stream 1: 200")
seen = client.json(1)
check(seen["path"] == "/web/x" and seen["method"] == "GET", f"the backend got the request ({seen})")
check(seen["x-forwarded-for"] == "127.0.0.1", f"X-Forwarded-For carries the client ({seen})")
check(seen["forwarded"].startswith("for=127.0.0.1;proto=http"), f"Forwarded ({seen['forwarded']})")
check(seen["upgrade"] is None and seen["http2-settings"] is None, "hop-by-hop fields of the upgrade are not forwarded")
remote = client.conn.remote_settings
check(remote.max_concurrent_streams == 100, f"SETTINGS_MAX_CONCURRENT_STREAMS is the default 100 ({remote.max_concurrent_streams})")
check(remote.max_header_list_size == 16384, f"SETTINGS_MAX_HEADER_LIST_SIZE is the default 16384 ({remote.max_header_list_size})")
# The ACK comes when the server has read the client's SETTINGS, which the client sent after
# the 101: stream 1 (the upgrade's own request) may well be answered first.
def acks():
    return [e for e in client.events if isinstance(e, h2.events.SettingsAcknowledged)]


client.pump_until(lambda: len(acks()) > 0)
check(len(acks()) == 1, f"exactly one SETTINGS ACK (for the client's SETTINGS frame): {len(acks())}")
client.conn.ping(b"switchya")
client.send()
check(client.pump_until(lambda: any(isinstance(e, h2.events.PingAckReceived) for e in client.events)), "PING acked")
stream = client.get("/web/second")
check(stream == 3, "the next stream is 3")
check(client.pump_until(lambda: client.finished(3)) and client.json(3)["path"] == "/web/second", "stream 3 answered")
client.sock.close()

# -- An upgrade with a body: it is stream 1's body. --------------------------------------
status, _, client = upgrade(path="/web/post", method="POST", body=b"x" * 50_000)
check(status == 101, "an upgrade with a body switches")
check(client.pump_until(lambda: client.finished(1)), "stream 1 with a body answered")
seen = client.json(1)
check(seen["method"] == "POST" and seen["body_len"] == 50_000, f"stream 1's body reached the backend ({seen})")
client.sock.close()

# -- Upgrades that must not switch (RFC 9113 §3.2): answered as HTTP/1.1. -----------------
for settings, what in [
    (["Connection: Upgrade"], "no HTTP2-Settings"),
    (["Connection: Upgrade, HTTP2-Settings", "HTTP2-Settings: AAMAAABk", "HTTP2-Settings: AAMAAABk"], "two HTTP2-Settings"),
    (["Connection: Upgrade, HTTP2-Settings", "HTTP2-Settings: AA*AAABk"], "bad base64url"),
    (["Connection: Upgrade, HTTP2-Settings", "HTTP2-Settings: AAMA"], "not a SETTINGS payload"),
    (["Connection: Upgrade", "HTTP2-Settings: AAMAAABk"], "HTTP2-Settings not named in Connection"),
]:
    status, head, client = upgrade(settings=settings)
    check(client is None and status in (400, 426), f"{what}: not switched ({status})")
sock = connect()
sock.sendall(b"GET /web/x HTTP/1.0\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n")
status, head, _ = read_head(sock)
check(status not in (0, 101), f"HTTP/1.0: not switched ({status})")
sock.close()

# -- Prior knowledge; per-stream answers; other streams live on. --------------------------
client = prior_knowledge()
streams = {
    "ok": client.get("/web/pk"),
    "none": client.get("/nowhere"),
    "refused": client.get("/refused/x"),
    "full": client.get("/full/x"),
    "ok2": client.get("/web/pk2"),
}
check(client.pump_until(lambda: all(client.finished(s) for s in streams.values()), 20), "every stream answered")
check(client.status(streams["ok"]) == 200 and client.status(streams["ok2"]) == 200, "routed streams: 200")
check(client.status(streams["none"]) == 404, "no route: 404 on that stream")
check(client.status(streams["refused"]) == 502, "backend refused: 502 on that stream")
check(client.status(streams["full"]) == 504, "backend did not connect in time: 504 on that stream")
web_host = os.environ.get("H2C_WEB_HOST", "test.example")
check(client.json(streams["ok"])["host"] == web_host, f"an HTTP/1.1 backend gets the authority its proxy was asked for as Host ({web_host})")

# -- A backend's reset reaches the client: its stream is reset, not ended as if whole. ----
reset = client.get("/reset/x")
check(client.pump_until(lambda: client.finished(reset)), "the stream the backend reset ended")
r = client.responses[reset]
check("reset" in r and not r.get("ended"), f"the client saw a reset, not a whole answer ({r})")
check(r.get("body", b"") in (b"", b"partial"), "no more than the backend sent")

# -- Trailers pass both ways: the request's reach the backend, the backend's the client. ---
t = client.conn.get_next_available_stream_id()
client.conn.send_headers(t, [(":method", "POST"), (":scheme", "http"), (":authority", "t"), (":path", "/trailers/x"), ("te", "trailers")])
client.conn.send_data(t, b"request body")
client.conn.send_headers(t, [("x-checksum", "abc123")], end_stream=True)
client.send()
check(client.pump_until(lambda: client.finished(t)), "the trailers stream ended")
got = client.responses[t].get("trailers", {})
check(got.get(b"echo-x-checksum") == b"abc123", f"request trailers reached the backend, response trailers came back ({got})")

# -- A stream error: a malformed request, END_STREAM on HEADERS that promise a body with
#    content-length (RFC 9113 §8.1.1): RST_STREAM PROTOCOL_ERROR; the connection goes on. --
bad = client.conn.get_next_available_stream_id()
client.conn.send_headers(
    bad,
    [(":method", "POST"), (":scheme", "http"), (":authority", "t"), (":path", "/web/bad"), ("content-length", "5")],
    end_stream=True,
)
client.send()
check(client.pump_until(lambda: client.finished(bad)), "the malformed stream ended")
check(client.responses[bad].get("reset") == 1, f"RST_STREAM PROTOCOL_ERROR ({client.responses[bad]})")
after = client.get("/web/after")
check(client.pump_until(lambda: client.finished(after)) and client.status(after) == 200, "the connection serves on")

# -- A connection error: DATA on stream 0 (RFC 9113 §6.1): GOAWAY PROTOCOL_ERROR. ---------
client.sock.sendall(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
gone = lambda: any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events)
check(client.pump_until(gone), "GOAWAY after DATA on stream 0")
goaway = [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)][0]
check(goaway.error_code == 1, f"GOAWAY PROTOCOL_ERROR ({goaway.error_code})")
client.sock.close()

# -- Flow control end to end: a client that does not read holds its backend back, and the
#    daemon holds no more than the windows; a reset reaches the backend. -----------------
def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def big_stats():
    c = prior_knowledge()
    s = c.get("/web/big-stats")
    c.pump_until(lambda: c.finished(s))
    c.sock.close()
    return c.json(s)


rss_before = rss_kib(DAEMON)
client = prior_knowledge()
big = client.get("/web/big")
check(client.pump_until(lambda: "headers" in client.responses.get(big, {})), "/web/big answered")
# Now read nothing: no WINDOW_UPDATE goes out, and the socket is not read either.
time.sleep(2.0)
written = big_stats()["written"]
check(written < 32 * 1024 * 1024, f"the backend was held back: {written} of 256 MiB written")
grown = rss_kib(DAEMON) - rss_before
check(grown < 32 * 1024, f"the daemon buffered little: RSS grew {grown} KiB")
print(f"flow control: the backend wrote {written >> 10} KiB of 256 MiB to a client reading nothing; daemon RSS grew {grown} KiB")
client.conn.reset_stream(big)
client.send()
deadline = time.time() + 5
while big_stats()["ended"] is None and time.time() < deadline:
    time.sleep(0.1)
ended = big_stats()["ended"]
check(ended is not None and ended.startswith("aborted"), f"the client's RST_STREAM reached the backend ({ended})")
client.sock.close()

# -- The daemon serves on. ----------------------------------------------------------------
client = prior_knowledge()
s = client.get("/web/still")
check(client.pump_until(lambda: client.finished(s)) and client.status(s) == 200, "a new connection is served")

# -- The daemon stops: GOAWAY, and the stream in flight (a second long) still finishes. ---
s = client.get("/web/slow")
time.sleep(0.2)
os.kill(DAEMON, signal.SIGTERM)
check(client.pump_until(lambda: client.finished(s), 10), "the stream in flight finished while stopping")
check(client.status(s) == 200 and client.json(s)["path"] == "/web/slow", "with its whole answer")
goaway = lambda: any(isinstance(e, h2.events.ConnectionTerminated) and e.error_code == 0 for e in client.events)
check(client.pump_until(goaway, 5), "GOAWAY NO_ERROR")

print(f"h2: {checks} checks passed")
