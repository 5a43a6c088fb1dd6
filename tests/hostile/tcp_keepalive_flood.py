#!/usr/bin/env python3
"""A hostile TCP peer: opens N connections to a node's tcp-listener, sends a keepalive
(a framed 0x02 message, see docs/protocol.md) on each every 2 s, never reads and never says
hello. Records when the node closes each one (FIN or reset, seen without reading via
POLLRDHUP/POLLHUP or a failed send), and prints one JSON summary line at the end.

usage: tcp_keepalive_flood.py HOST PORT CONNECTIONS SECONDS
"""
import json
import os
import select
import socket
import struct
import sys
import time

host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
KEEPALIVE = struct.pack(">H", 9) + b"\x02" + os.urandom(8)

start = time.monotonic()
conns = {}  # fd -> [socket, opened_at, closed_at or None]
refused = 0
poller = select.poll()
for _ in range(count):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        s.connect((host, port))
    except OSError:
        refused += 1
        s.close()
        continue
    s.setblocking(False)
    conns[s.fileno()] = [s, time.monotonic(), None]
    poller.register(s.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)


def mark_closed(fd, now):
    entry = conns[fd]
    if entry[2] is None:
        entry[2] = now
        poller.unregister(fd)


next_keepalive = time.monotonic()
while time.monotonic() - start < seconds:
    now = time.monotonic()
    if now >= next_keepalive:
        for fd, entry in conns.items():
            if entry[2] is not None:
                continue
            try:
                entry[0].send(KEEPALIVE)
            except OSError:
                mark_closed(fd, now)
        next_keepalive = now + 2.0
    for fd, events in poller.poll(200):
        mark_closed(fd, time.monotonic())

end = time.monotonic()
lifetimes = [(c or end) - o for _, o, c in conns.values()]
print(json.dumps({
    "opened": len(conns),
    "refused": refused,
    "closed": sum(1 for _, _, c in conns.values() if c is not None),
    "max_lifetime": max(lifetimes) if lifetimes else 0.0,
}), flush=True)
