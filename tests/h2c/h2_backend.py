"""An HTTP/2 backend (prior knowledge, Python's h2). Under /reset/ it answers with headers
and a first piece of body, then resets the stream (RST_STREAM INTERNAL_ERROR): what a
client must see as a reset, not as a whole answer. Under /trailers/ it reads the request
to its end and answers with the request's trailers as its own (each name prefixed
`echo-`), after a body. Prints `listening PORT`."""
import socket
import threading

import h2.config
import h2.connection
import h2.events


def serve(sock):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    paths, trailers = {}, {}
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                path = dict(event.headers)[b":path"]
                paths[event.stream_id] = path
                if path.startswith(b"/reset/"):
                    conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", "1000")])
                    conn.send_data(event.stream_id, b"partial")
                    conn.reset_stream(event.stream_id, error_code=2)
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                trailers[event.stream_id] = [(b"echo-" + n, v) for n, v in event.headers]
            elif isinstance(event, h2.events.StreamEnded) and paths.get(event.stream_id, b"").startswith(b"/trailers/"):
                conn.send_headers(event.stream_id, [(":status", "200")])
                conn.send_data(event.stream_id, b"body")
                conn.send_headers(event.stream_id, trailers.get(event.stream_id, []) or [(b"echo-none", b"1")], end_stream=True)
        sock.sendall(conn.data_to_send())


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(64)
print("listening", listener.getsockname()[1], flush=True)
while True:
    client, _ = listener.accept()
    threading.Thread(target=serve, args=(client,), daemon=True).start()
