"""gRPC end to end through switchyard (grpcio speaks HTTP/2 with prior knowledge on an
insecure channel): unary, server and client streaming, a status error with its message, a
deadline that cancels the backend's call, and 16 MiB messages both ways checked by digest.
Usage: grpc_client.py HOST:PORT [CA_FILE]: with CA_FILE, over TLS (ALPN h2), the daemon's
certificate checked against that authority for the name "localhost"."""
import hashlib
import sys

import grpc

SERVICE = "/switchyard.test.Echo/"
LIMIT = 64 * 1024 * 1024
options = [("grpc.max_send_message_length", LIMIT), ("grpc.max_receive_message_length", LIMIT)]
if len(sys.argv) > 2:
    with open(sys.argv[2], "rb") as ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read())
    options.append(("grpc.ssl_target_name_override", "localhost"))
    channel = grpc.secure_channel(sys.argv[1], credentials, options=options)
else:
    channel = grpc.insecure_channel(sys.argv[1], options=options)


def call(kind, method):
    return getattr(channel, kind)(SERVICE + method, request_serializer=None, response_deserializer=None)


checks = 0


def check(condition, what):
    global checks
    if not condition:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)
    checks += 1


unary = call("unary_unary", "Unary")
check(unary(b"hi", timeout=10) == b"echo:hi", "unary")

counted = [m for m in call("unary_stream", "Count")(b"50", timeout=10)]
check(counted == [str(i).encode() for i in range(50)], "server streaming, 50 messages in order")

total = call("stream_unary", "Total")(iter(str(i).encode() for i in range(1000)), timeout=10)
check(total == str(sum(range(1000))).encode(), "client streaming, 1000 messages")

try:
    call("unary_unary", "Fail")(b"precondition", timeout=10)
    check(False, "a failing call fails")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.FAILED_PRECONDITION, f"status passes (got {e.code()})")
    check(e.details() == "the backend says no: precondition", f"message passes ({e.details()!r})")

try:
    call("unary_unary", "Slow")(b"", timeout=0.5)
    check(False, "a call past its deadline fails")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline (got {e.code()})")
check(call("unary_unary", "WasCancelled")(b"", timeout=10) == b"yes", "the deadline cancelled the backend's call")

# 16 MiB up (its digest comes back) and 16 MiB down (checked against what it should be).
size = 16 * 1024 * 1024
up = size.to_bytes(8, "big") + bytes((i * 13) % 256 for i in range(size - 8))
down = call("unary_unary", "Digest")(up, timeout=60)
check(down[:32] == hashlib.sha256(up).digest(), "16 MiB to the backend, digest matches")
expected = bytes((i * 7) % 251 for i in range(size))
check(hashlib.sha256(down[32:]).digest() == hashlib.sha256(expected).digest(), "16 MiB from the backend, digest matches")

# Many calls at once on one connection (multiplexed), each answer its own.
futures = [unary.future(str(i).encode(), timeout=20) for i in range(200)]
check(all(f.result() == b"echo:" + str(i).encode() for i, f in enumerate(futures)), "200 concurrent calls")

print(f"grpc: {checks} checks passed")
