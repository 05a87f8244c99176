#!/usr/bin/env python3
"""A scripted DNS upstream on 127.0.0.1 for the shell tests of the image and
the release artifacts (deploy/test-image.sh, packaging/test.sh).

Usage: test-upstream.py PORT_FILE LOG_FILE. Binds a free UDP port on
127.0.0.1 and writes it to PORT_FILE; answers every A query with 192.0.2.53,
anything else with an empty NOERROR; names starting with "slow" after 1.5 s
(for the drain at SIGTERM). Each query's name is appended to LOG_FILE. Exits
after 600 s without a query.
"""
import socket, struct, sys, threading, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
log = open(sys.argv[2], "a", buffering=1)
def reply(query, peer):
    if len(query) < 17:
        return
    i, labels = 12, []
    while i < len(query) and query[i] != 0:
        labels.append(query[i + 1 : i + 1 + query[i]].decode("ascii", "replace"))
        i += 1 + query[i]
    qtype = struct.unpack(">H", query[i + 1 : i + 3])[0]
    name = ".".join(labels).lower()
    log.write(name + "\n")
    if name.startswith("slow"):
        time.sleep(1.5)
    rd = struct.unpack(">H", query[2:4])[0] & 0x0100
    answer = b""
    if qtype == 1:
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 53])
    header = struct.pack(">HHHHHH", struct.unpack(">H", query[:2])[0], 0x8080 | rd, 1, 1 if answer else 0, 0, 0)
    sock.sendto(header + query[12 : i + 5] + answer, peer)
open(sys.argv[1], "w").write(str(sock.getsockname()[1]))
deadline = time.time() + 600
while time.time() < deadline:
    sock.settimeout(max(0.1, deadline - time.time()))
    try:
        data, peer = sock.recvfrom(4096)
    except socket.timeout:
        break
    threading.Thread(target=reply, args=(data, peer), daemon=True).start()
