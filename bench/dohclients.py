#!/usr/bin/env python3
"""The DoH clients of bench/run.sh, standard library only: just enough
HTTP/2 (RFC 9113) for one POST per connection (RFC 8484).

  dohclients.py check --port P --ca CA [--path /dns-query] [--wait S]
      One verified TLS connection (ALPN h2, the certificate checked against
      CA for dot.bench.test) per query of a few; each must be answered 200
      with a DNS reply, NOERROR and an answer. Retries for up to S seconds
      while the server starts. Exit 0 or 1.

  dohclients.py query --out FILE [--name N] [--type T]
      Writes the DNS query h2load posts (ID 0, as RFC 8484 advises).

  dohclients.py idle  --port P --count N --pid PID [--path /dns-query]
      N HTTP/2 connections that each POST one query and read its reply, then
      stay open and idle; the RSS of PID before and after, and how many
      connections the server still holds (as dotclients.py idle for DoT).

Why not h2load for the idle test: it closes a connection once its requests
are done. The HTTP/2 here is the least a server accepts: the preface, an
empty SETTINGS, the ACK of the server's SETTINGS, one HEADERS (HPACK
literals, no Huffman, no dynamic table) and one DATA frame.
"""
import argparse
import selectors
import ssl
import struct
import sys
import time

import dotclients

SNI = dotclients.SNI
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY = 0, 1, 3, 4, 7
END_STREAM, ACK = 0x1, 0x1


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(index, value):
    """A header field without indexing, its name from HPACK's static table."""
    value = value.encode()
    assert len(value) < 127
    head = bytes([index]) if index < 15 else bytes([15, index - 15])
    return head + bytes([len(value)]) + value


def request(path, body, authority=SNI):
    """Preface, SETTINGS and a POST of `body` on stream 1."""
    block = (b"\x83"  # :method POST (static 3)
             + b"\x87"  # :scheme https (static 7)
             + literal(4, path)  # :path
             + literal(1, authority)  # :authority
             + literal(31, "application/dns-message")  # content-type
             + literal(19, "application/dns-message")  # accept
             + literal(28, str(len(body))))  # content-length
    return (PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 0x4, 1, block)
            + frame(DATA, END_STREAM, 1, body))


def context(ca=None):
    ctx = dotclients.client_context(ca)
    ctx.set_alpn_protocols(["h2"])
    return ctx


class H2Conn(dotclients.Conn):
    """connect -> handshake -> one POST -> its reply, non-blocking; the
    HTTP/2 frames the server sends are parsed as they come."""

    path = "/dns-query"

    def __init__(self, ctx, port, qid, session=None):
        super().__init__(ctx, port, qid, session)
        self.body = self.out[2:]
        self.out = request(self.path, self.body)
        self.seen = 0  # bytes of self.buf already parsed
        self.status = None
        self.reply = b""
        self.ended = False

    def answered(self):
        while len(self.buf) - self.seen >= 9:
            length = int.from_bytes(self.buf[self.seen:self.seen + 3], "big")
            kind, flags = self.buf[self.seen + 3], self.buf[self.seen + 4]
            stream = struct.unpack(">I", self.buf[self.seen + 5:self.seen + 9])[0] & 0x7FFFFFFF
            end = self.seen + 9 + length
            if len(self.buf) < end:
                break
            payload = self.buf[self.seen + 9:end]
            self.seen = end
            if kind == SETTINGS and not flags & ACK:
                self.tls.sendall(frame(SETTINGS, ACK, 0))
            elif kind in (RST_STREAM, GOAWAY) and stream in (0, 1):
                raise ConnectionError(f"the server sent frame type {kind}")
            elif stream == 1 and kind == HEADERS:
                # :status 200 is HPACK static entry 8; anything else is not a success here
                self.status = 200 if payload[:1] == b"\x88" else payload[:1].hex()
                self.ended |= bool(flags & END_STREAM)
            elif stream == 1 and kind == DATA:
                self.reply += payload
                self.ended |= bool(flags & END_STREAM)
        return self.ended

    def step(self):
        try:
            r = super().step()
        except ConnectionError:
            return "failed"
        if r == "done" and self.status != 200:
            return "failed"
        return r


def check(a):
    H2Conn.path = a.path
    ctx = context(a.ca)
    names = [("dot.bench.test.", 1), ("n1.bench.test.", 28), ("n2.bench.test.", 16),
             ("large0.bench.test.", 16)]
    deadline = time.monotonic() + a.wait
    while True:
        try:
            for i, (name, qtype) in enumerate(names):
                c = H2Conn(ctx, a.port, i + 1)
                c.body = dotclients.query(i + 1, name, qtype)[2:]
                c.out = request(a.path, c.body)
                blocking(c)
                reply = c.reply
                rcode, ancount = reply[3] & 15, struct.unpack(">H", reply[6:8])[0]
                if c.status != 200 or rcode != 0 or ancount == 0:
                    raise ValueError(f"{name} type {qtype}: HTTP {c.status}, rcode {rcode}, {ancount} answers")
                if c.tls.selected_alpn_protocol() != "h2":
                    raise ValueError(f"ALPN chose {c.tls.selected_alpn_protocol()}, not h2")
                c.close()
            return 0
        except (OSError, ssl.SSLError, ValueError, ConnectionError, IndexError) as e:
            if time.monotonic() > deadline:
                print(f"check: https://127.0.0.1:{a.port}{a.path}: {e}", file=sys.stderr)
                return 1
            time.sleep(0.3)


def blocking(c, seconds=5):
    """Drives one H2Conn to its end, waiting at most `seconds`."""
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as sel:
        sel.register(c.tls, c.events)
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.2):
                continue
            r = c.step()
            if r == "done":
                return
            if r == "failed":
                raise ConnectionError(f"failed (HTTP status {c.status})")
            sel.modify(c.tls, c.events)
    raise TimeoutError("no reply in time")


def write_query(a):
    with open(a.out, "wb") as f:
        f.write(dotclients.query(0, a.name, a.type)[2:])
    return 0


def idle(a):
    H2Conn.path = a.path
    return dotclients.idle(a, context(), H2Conn)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--ca", required=True, help="CA of the server's certificate")
    c.add_argument("--wait", type=float, default=0)
    q = sub.add_parser("query")
    q.add_argument("--out", required=True)
    q.add_argument("--name", default="n1.bench.test.")
    q.add_argument("--type", type=int, default=1)
    i = sub.add_parser("idle")
    i.add_argument("--count", type=int, required=True)
    i.add_argument("--pid", type=int, required=True)
    i.add_argument("--concurrency", type=int, default=64)
    i.add_argument("--settle", type=float, default=3)
    i.add_argument("--timeout", type=float, default=240, help="bound on opening them all")
    for p in (c, i):
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--path", default="/dns-query")
    a = ap.parse_args()
    return {"check": check, "query": write_query, "idle": idle}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
