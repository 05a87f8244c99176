#!/usr/bin/env python3
"""Hostile and idle DoT clients for scripts/soak.sh.

Runs every kind of client below against one dotgate on 127.0.0.1 until the
deadline, each bounded in number, then prints one line of counts per kind.
Nothing here checks answers: dnsperf is the normal client whose losses count.

  idle      N TLS connections that send one query each and then sit idle;
            reopened when dotgate closes them (idle timeout), as Android does
  stall     TCP connections that send half a ClientHello and stall
  dribble   TLS connections that announce 65535 bytes, then send one a second
  garbage   TLS connections that send random bytes or broken DNS messages
  noread    TLS connections that pipeline many queries and never read
  plaintext plain DNS over TCP on the TLS port
"""

import argparse
import asyncio
import random
import ssl
import struct
import time

HALF_CLIENT_HELLO = bytes.fromhex("160301020001000200030300") + bytes(40)


def query(qid, name, qtype=1):
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split("."))
    return header + labels + b"\x00" + struct.pack(">HH", qtype, 1)


def framed(msg):
    return struct.pack(">H", len(msg)) + msg


def tls_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Soak:
    def __init__(self, port, deadline, idle):
        self.port = port
        self.deadline = deadline
        self.idle = idle
        self.ctx = tls_context()
        self.counts = {}
        self.rng = random.Random(853)

    def count(self, what, n=1):
        self.counts[what] = self.counts.get(what, 0) + n

    def left(self):
        return self.deadline - time.monotonic()

    async def tls(self):
        return await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port, ssl=self.ctx), 10
        )

    async def until_closed(self, reader, limit):
        try:
            while await asyncio.wait_for(reader.read(65536), limit):
                pass
        except (asyncio.TimeoutError, OSError, ssl.SSLError):
            pass

    async def idle_one(self, i):
        while self.left() > 0:
            try:
                reader, writer = await self.tls()
                writer.write(framed(query(i & 0xFFFF, f"host{i % 500}.soak.test")))
                await writer.drain()
                await asyncio.wait_for(reader.readexactly(2), 10)
                self.count("idle_connected")
                await self.until_closed(reader, max(self.left(), 0.1))
                writer.close()
            except (OSError, ssl.SSLError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                self.count("idle_errors")
                await asyncio.sleep(1)

    async def stall(self):
        while self.left() > 0:
            async def one():
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.write(HALF_CLIENT_HELLO)
                    await writer.drain()
                    await self.until_closed(reader, 30)
                    writer.close()
                    self.count("stall_closed")
                except OSError:
                    self.count("stall_refused")
            await asyncio.gather(*(one() for _ in range(50)))

    async def dribble(self):
        while self.left() > 0:
            try:
                reader, writer = await self.tls()
                writer.write(b"\xff\xff")
                started = time.monotonic()
                while self.left() > 0:
                    await asyncio.sleep(1)
                    writer.write(b"\x00")
                    await writer.drain()
                    if reader.at_eof():
                        break
                self.count("dribble_closed_after_s", int(time.monotonic() - started))
                self.count("dribble_closed")
                writer.close()
            except (OSError, ssl.SSLError, asyncio.TimeoutError):
                self.count("dribble_closed")
                await asyncio.sleep(0.5)

    def garbage_payload(self):
        kind = self.rng.randrange(5)
        if kind == 0:
            return bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 600)))
        if kind == 1:  # a reply sent as a query
            msg = bytearray(query(1, "qr.soak.test"))
            msg[2] |= 0x80
            return framed(bytes(msg))
        if kind == 2:  # five questions promised, none there
            return framed(struct.pack(">HHHHHH", 2, 0x0100, 5, 0, 0, 0))
        if kind == 3:  # a compression pointer to itself
            return framed(struct.pack(">HHHHHH", 3, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01")
        return b"\x00\x00"  # length 0

    async def garbage(self):
        while self.left() > 0:
            try:
                reader, writer = await self.tls()
                writer.write(self.garbage_payload())
                await writer.drain()
                await self.until_closed(reader, 5)
                writer.close()
                self.count("garbage_sent")
            except (OSError, ssl.SSLError, asyncio.TimeoutError):
                self.count("garbage_refused")
            await asyncio.sleep(0.2)

    async def noread(self):
        while self.left() > 0:
            try:
                reader, writer = await self.tls()
                batch = b"".join(framed(query(i, f"host{i % 500}.soak.test", 16)) for i in range(3000))
                writer.write(batch)
                started = time.monotonic()
                await self.until_closed_without_reading(writer, 120)
                self.count("noread_closed")
                self.count("noread_closed_after_s", int(time.monotonic() - started))
                writer.close()
            except (OSError, ssl.SSLError, asyncio.TimeoutError):
                self.count("noread_errors")
                await asyncio.sleep(1)

    async def until_closed_without_reading(self, writer, limit):
        # Keep writing a query now and then without ever reading: the write
        # fails once dotgate has closed the connection.
        end = time.monotonic() + min(limit, max(self.left(), 0.1))
        while time.monotonic() < end:
            await asyncio.sleep(1)
            try:
                writer.write(framed(query(7, "host1.soak.test")))
                await asyncio.wait_for(writer.drain(), 1)
            except (OSError, ssl.SSLError):
                return
            except asyncio.TimeoutError:
                pass
            if writer.is_closing() or writer.transport.get_extra_info("socket") is None:
                return

    async def plaintext(self):
        while self.left() > 0:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(framed(query(9, "host1.soak.test")))
                await writer.drain()
                data = await asyncio.wait_for(reader.read(100), 5)
                self.count("plaintext_answered" if data else "plaintext_closed")
                writer.close()
            except (OSError, asyncio.TimeoutError):
                self.count("plaintext_closed")
            await asyncio.sleep(0.5)

    async def run(self):
        tasks = [self.idle_one(i) for i in range(self.idle)]
        tasks += [self.stall()]
        tasks += [self.dribble() for _ in range(20)]
        tasks += [self.garbage() for _ in range(5)]
        tasks += [self.noread() for _ in range(10)]
        tasks += [self.plaintext()]
        runners = [asyncio.ensure_future(t) for t in tasks]
        await asyncio.sleep(max(self.left(), 0))
        await asyncio.sleep(2)
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--idle", type=int, default=1000)
    args = parser.parse_args()
    soak = Soak(args.port, time.monotonic() + args.seconds, args.idle)
    asyncio.run(soak.run())
    for key in sorted(soak.counts):
        print(f"clients {key} {soak.counts[key]}")


if __name__ == "__main__":
    main()
