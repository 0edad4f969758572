"""An HTTP/1.1 backend with keep-alive for the h2c tests: answers every request with what
it saw (method, path, the forwarding headers, a digest of the body) as JSON. `/slow` waits
a second first. Prints `listening PORT` once it listens on 127.0.0.1 (port 0: its own)."""
import hashlib
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


# What `/big` managed to write before its client stopped reading or went away.
big = {"written": 0, "ended": None}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the plugin's pool expects

    def big(self):
        """256 MiB, written as fast as the other side takes it."""
        big["written"], big["ended"] = 0, None
        chunk = b"b" * 65536
        self.send_response(200)
        self.send_header("Content-Length", str(256 * 1024 * 1024))
        self.end_headers()
        try:
            for _ in range(4096):
                self.wfile.write(chunk)
                big["written"] += len(chunk)
            big["ended"] = "complete"
        except OSError as e:
            big["ended"] = "aborted: " + type(e).__name__
            self.close_connection = True

    def answer(self):
        if self.path == "/web/big":
            return self.big()
        if self.path == "/web/big-stats":
            out = json.dumps(big).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        seen = {
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("Host"),
            "x-forwarded-for": self.headers.get("X-Forwarded-For"),
            "forwarded": self.headers.get("Forwarded"),
            "connection": self.headers.get("Connection"),
            "upgrade": self.headers.get("Upgrade"),
            "http2-settings": self.headers.get("HTTP2-Settings"),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_len": len(body),
        }
        out = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = answer

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print("listening", server.server_address[1], flush=True)
server.serve_forever()
