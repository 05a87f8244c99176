#!/usr/bin/env python3
"""The DoT clients of bench/run.sh, standard library only.

  dotclients.py check      --port P (--ca CA | --udp) [--wait S]
      One verified TLS connection (certificate checked against CA for the name
      dot.bench.test), a few queries, each must be answered NOERROR with an
      answer; or, with --udp, one plain query. Retries for up to S seconds
      while the server starts. Exit 0 or 1.

  dotclients.py handshakes --port P --seconds S [--concurrency N]
      N connections at a time, each: a full TLS handshake (sessions are never
      resumed), one query, its answer, close; new ones for S seconds.

  dotclients.py idle       --port P --count N --pid PID [--settle S]
      Opens N connections that each send one query and read its answer, then
      stay open and idle. Reads the RSS of PID (and its descendants) before
      and after, and counts how many connections the server still holds.

handshakes and idle print one JSON line. The server certificate is not
verified there: that would only spend the client's CPU, which is already what
limits the handshake rate. Every wait is bounded.
"""
import argparse
import json
import os
import resource
import selectors
import socket
import ssl
import struct
import sys
import time

SNI = "dot.bench.test"


def query(qid, name="dot.bench.test.", qtype=1):
    """A DNS query with its 2-byte length prefix."""
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split("."))
    msg = struct.pack(">6H", qid & 0xFFFF, 0x0100, 1, 0, 0, 0) + labels + b"\0"
    msg += struct.pack(">HH", qtype, 1)
    return struct.pack(">H", len(msg)) + msg


def complete(buf):
    """The reply in buf (without its prefix) once it is all there, else None."""
    if len(buf) < 2:
        return None
    n = struct.unpack(">H", buf[:2])[0]
    return buf[2 : 2 + n] if len(buf) >= 2 + n else None


def client_context(ca=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        ctx.load_verify_locations(ca)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def tree(pid):
    """pid and its descendants."""
    kids = {}
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def rss_kib(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


# ------------------------------------------------------------------ check
def check(a):
    if a.udp:
        return check_udp(a)
    ctx = client_context(a.ca)
    names = [("dot.bench.test.", 1), ("n1.bench.test.", 28), ("n2.bench.test.", 16),
             ("large0.bench.test.", 16)]
    deadline = time.monotonic() + a.wait
    while True:
        try:
            with socket.create_connection(("127.0.0.1", a.port), timeout=3) as raw:
                with ctx.wrap_socket(raw, server_hostname=SNI) as tls:
                    for i, (name, qtype) in enumerate(names):
                        tls.sendall(query(i + 1, name, qtype))
                        buf = b""
                        while complete(buf) is None:
                            chunk = tls.recv(65536)
                            if not chunk:
                                raise ConnectionError("closed before the reply")
                            buf += chunk
                        reply = complete(buf)
                        rcode, ancount = reply[3] & 15, struct.unpack(">H", reply[6:8])[0]
                        if rcode != 0 or ancount == 0:
                            raise ValueError(f"{name} type {qtype}: rcode {rcode}, {ancount} answers")
            return 0
        except (OSError, ssl.SSLError, ValueError, ConnectionError) as e:
            if time.monotonic() > deadline:
                print(f"check: 127.0.0.1:{a.port}: {e}", file=sys.stderr)
                return 1
            time.sleep(0.3)


def check_udp(a):
    """The backend: one plain query over UDP, answered NOERROR."""
    deadline = time.monotonic() + a.wait
    while True:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(1)
                s.sendto(query(53)[2:], ("127.0.0.1", a.port))
                reply = s.recv(4096)
                if reply[:2] == b"\0\x35" and reply[3] & 15 == 0:
                    return 0
        except OSError:
            pass
        if time.monotonic() > deadline:
            print(f"check: no answer over UDP from 127.0.0.1:{a.port}", file=sys.stderr)
            return 1
        time.sleep(0.3)


# ------------------------------------------------------------------ many connections
class Conn:
    """connect -> handshake -> one query -> its reply, non-blocking."""

    def __init__(self, ctx, port, qid, session=None):
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tls = ctx.wrap_socket(self.sock, server_hostname=SNI, do_handshake_on_connect=False,
                                   session=session)
        self.tls.connect_ex(("127.0.0.1", port))  # in progress; the handshake waits for it
        self.out = query(qid, f"n{qid % 3000}.bench.test.")
        self.buf = b""
        self.state = "handshake"
        self.events = selectors.EVENT_WRITE  # connect completes when writable

    def step(self):
        """Advance; returns "done", "failed" or None (waiting for self.events)."""
        try:
            if self.state == "handshake":
                self.tls.do_handshake()
                self.state = "send"
            if self.state == "send":
                self.tls.sendall(self.out)
                self.state = "reply"
            while not self.answered():
                chunk = self.tls.recv(65536)
                if not chunk:
                    return "failed"
                self.buf += chunk
            self.state = "done"
            return "done"
        except ssl.SSLWantReadError:
            self.events = selectors.EVENT_READ
        except ssl.SSLWantWriteError:
            self.events = selectors.EVENT_WRITE
        except (OSError, ssl.SSLError):
            return "failed"
        return None

    def answered(self):
        """The reply is all in self.buf (DoT: its length prefix says so)."""
        return complete(self.buf) is not None

    def open(self):
        """For an idle connection: False once the server has closed it."""
        try:
            return self.tls.recv(65536) != b""  # TLS 1.3 tickets may still arrive
        except ssl.SSLWantReadError:
            return True
        except (OSError, ssl.SSLError):
            return False

    def close(self):
        try:
            self.tls.close()
        except OSError:
            pass


def run_conns(ctx, port, concurrency, deadline, total, on_done, session=lambda: None, conn=Conn):
    """Keep `concurrency` connections (of class `conn`, DoT's Conn unless
    told) in progress until deadline, or until `total` were started (if
    given) and all have finished; each new one offers the session
    `session()` gives, if any. Returns (done, failed)."""
    sel = selectors.DefaultSelector()
    started = done = failed = 0
    while time.monotonic() < deadline:
        while len(sel.get_map()) < concurrency and (total is None or started < total):
            c = conn(ctx, port, started, session())
            started += 1
            sel.register(c.tls, c.events, c)
        if not sel.get_map():
            break
        for key, _ in sel.select(timeout=0.2):
            c = key.data
            r = c.step()
            if r is None:
                sel.modify(c.tls, c.events, c)
                continue
            sel.unregister(c.tls)
            if r == "done":
                done += 1
                on_done(c)
            else:
                failed += 1
                c.close()
    for key in list(sel.get_map().values()):
        key.data.close()
    sel.close()
    return done, failed


def handshakes(a):
    """Full handshakes, or with --resume, each connection resuming the
    session (ticket) of the latest finished one, as a returning phone does.
    The session is taken after the reply, when TLS 1.3 tickets have come."""
    raise_nofile()
    ctx = client_context()
    info = {"resumed": 0}
    latest = {"session": None}

    def finished(c):
        info.setdefault("tls", f"{c.tls.version()} {c.tls.cipher()[0]}")
        info["resumed"] += int(c.tls.session_reused)
        if a.resume and c.tls.session is not None:
            latest["session"] = c.tls.session
        c.close()

    if a.resume:
        # One full handshake first, for a session to resume.
        run_conns(ctx, a.port, 1, time.monotonic() + 10, 1, finished)
        if latest["session"] is None:
            print(json.dumps({"error": "no session to resume"}))
            return 1
        info["resumed"] = 0
    t0 = time.monotonic()
    done, failed = run_conns(ctx, a.port, a.concurrency, t0 + a.seconds, None, finished,
                             lambda: latest["session"])
    wall = time.monotonic() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"handshakes": done, "failed": failed, "seconds": round(wall, 3),
                      "rate": round(done / wall, 1), "tls": info.get("tls"),
                      "resumed": info["resumed"],
                      "client_cpu_pct": round(100 * (ru.ru_utime + ru.ru_stime) / wall, 1)}))
    return 0


def idle(a, ctx=None, conn=Conn):
    """Idle connections of class `conn` (DoT's unless told, as for DoH)."""
    if raise_nofile() < a.count + 100:
        sys.exit(f"idle: the descriptor limit is below {a.count + 100}")
    ctx = ctx or client_context()
    held = []
    rss0 = rss_kib(a.pid)
    t0 = time.monotonic()
    done, failed = run_conns(ctx, a.port, a.concurrency, t0 + a.timeout, a.count, held.append,
                             conn=conn)
    opening = time.monotonic() - t0
    time.sleep(a.settle)
    alive = sum(c.open() for c in held)
    rss1 = rss_kib(a.pid)
    for c in held:
        c.close()
    print(json.dumps({"count": a.count, "opened": done, "failed": failed, "alive": alive,
                      "rss_before_kib": rss0, "rss_after_kib": rss1,
                      "kib_per_conn": round((rss1 - rss0) / alive, 2) if alive else None,
                      "opening_s": round(opening, 1)}))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--ca", help="CA of the server's certificate (DoT)")
    c.add_argument("--udp", action="store_true", help="plain DNS over UDP instead")
    c.add_argument("--wait", type=float, default=0)
    h = sub.add_parser("handshakes")
    h.add_argument("--seconds", type=float, default=5)
    h.add_argument("--concurrency", type=int, default=64)
    h.add_argument("--resume", action="store_true",
                   help="resume the latest session instead of full handshakes")
    i = sub.add_parser("idle")
    i.add_argument("--count", type=int, required=True)
    i.add_argument("--pid", type=int, required=True)
    i.add_argument("--concurrency", type=int, default=64)
    i.add_argument("--settle", type=float, default=3)
    i.add_argument("--timeout", type=float, default=240, help="bound on opening them all")
    for p in (c, h, i):
        p.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    return {"check": check, "handshakes": handshakes, "idle": idle}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
