"""A gRPC server (grpcio) for the h2c tests, without generated code: methods of service
`switchyard.test.Echo` take and give raw bytes. Prints `listening PORT`."""
import hashlib
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "switchyard.test.Echo"
LIMIT = 64 * 1024 * 1024
cancelled = threading.Event()


def unary(request, context):
    return b"echo:" + request


def digest(request, context):
    """Answers a message with its SHA-256 and a message of the size asked for."""
    size = int.from_bytes(request[:8], "big")
    payload = hashlib.sha256(request).digest()
    return payload + bytes((i * 7) % 251 for i in range(size))


def count(request, context):
    """Server streaming: n messages."""
    for i in range(int(request)):
        yield str(i).encode()


def total(request_iterator, context):
    """Client streaming: the sum of the numbers sent."""
    return str(sum(int(m) for m in request_iterator)).encode()


def fail(request, context):
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the backend says no: " + request.decode())


def slow(request, context):
    """Waits until cancelled (the client's deadline) or 10 s."""
    cancelled.clear()
    context.add_callback(cancelled.set)
    for _ in range(100):
        if not context.is_active():
            break
        time.sleep(0.1)
    return b"late"


def was_cancelled(request, context):
    return b"yes" if cancelled.wait(5) else b"no"


def handler(kind, f):
    return kind(f, request_deserializer=None, response_serializer=None)


methods = {
    "Unary": handler(grpc.unary_unary_rpc_method_handler, unary),
    "Digest": handler(grpc.unary_unary_rpc_method_handler, digest),
    "Count": handler(grpc.unary_stream_rpc_method_handler, count),
    "Total": handler(grpc.stream_unary_rpc_method_handler, total),
    "Fail": handler(grpc.unary_unary_rpc_method_handler, fail),
    "Slow": handler(grpc.unary_unary_rpc_method_handler, slow),
    "WasCancelled": handler(grpc.unary_unary_rpc_method_handler, was_cancelled),
}
options = [("grpc.max_send_message_length", LIMIT), ("grpc.max_receive_message_length", LIMIT)]
server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options)
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print("listening", port, flush=True)
server.wait_for_termination()
