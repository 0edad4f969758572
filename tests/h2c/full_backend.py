"""A backend that never accepts and whose accept queue is full, so new connections to it
never complete: the plugin's connect time-out (504) is what it tests. Prints `listening
PORT`."""
import socket
import time

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(0)
held = []
for _ in range(8):  # more than the queue holds; the rest of the SYNs are dropped
    c = socket.socket()
    c.setblocking(False)
    c.connect_ex(listener.getsockname())
    held.append(c)
print("listening", listener.getsockname()[1], flush=True)
time.sleep(3600)
