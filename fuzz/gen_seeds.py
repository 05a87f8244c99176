#!/usr/bin/env python3
"""Writes the hand-made seeds into fuzz/corpus/<target>/seed-*.

Deterministic, so `fuzz/run.sh --seeds` (and anyone) can regenerate them
after `cargo fuzz cmin` has dropped some. The input layouts are documented
on the property functions in tests/fuzz_props/mod.rs. Messages near 65535
bytes are not written out: their big record's RDATA comes from the
"growth" field of the input (zero bytes appended to the message), so every
seed file stays small.
"""

import ipaddress
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def u16(v):
    return struct.pack(">H", v)


def name(text):
    out = b""
    for label in text.split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def header(id_, flags, qd=1, an=0, ns=0, ar=0):
    return u16(id_) + u16(flags) + u16(qd) + u16(an) + u16(ns) + u16(ar)


def question(qname="example.com", qtype=1):
    return name(qname) + u16(qtype) + u16(1)


def option(code, data=b""):
    return u16(code) + u16(len(data)) + data


def opt(options=b"", payload=4096, ext_rcode=0, version=0, flags=0):
    return (b"\0" + u16(41) + u16(payload) + bytes([ext_rcode, version])
            + u16(flags) + u16(len(options)) + options)


def rr(owner, rtype, rdata, ttl=60):
    return owner + u16(rtype) + u16(1) + struct.pack(">I", ttl) + u16(len(rdata)) + rdata


def rr_head(owner, rtype, rdlen):
    """A record header whose RDATA (rdlen zero bytes) comes from growth."""
    return owner + u16(rtype) + u16(1) + struct.pack(">I", 0) + u16(rdlen)


PTR12 = b"\xc0\x0c"  # compression pointer to the question name
A = rr(PTR12, 1, bytes([192, 0, 2, 1]))
COOKIE = option(10, bytes(range(1, 9)))
NSID = option(3, b"upstream")


def ecs_option(family, prefix, addr):
    """A client subnet option (RFC 7871) as a client might send it."""
    return option(8, u16(family) + bytes([prefix, 0]) + addr)


def ecs(client, v4=24, v6=56):
    """The `--upstream-ecs` part of a dns_query input: flag bits and the 18
    bytes (prefixes, address) that follow the fixed fields. `client` is an
    IPv4 or IPv6 address in text; "mapped:" before an IPv4 one makes it an
    IPv4-mapped IPv6 client."""
    mapped = client.startswith("mapped:")
    client = client.removeprefix("mapped:")
    if ":" in client:
        flags, addr = 4 | 8, ipaddress.IPv6Address(client).packed
    else:
        flags, addr = 4 | (8 | 16 if mapped else 0), ipaddress.IPv4Address(client).packed
    return flags, bytes([v4, v6]) + addr.ljust(16, b"\0")


def dns_query(uid=0x4242, leg_keepalive=False, leg_padding=False, timeout=300,
              rcode=2, grow=0, msg=b"", upstream_ecs=None):
    flags = int(leg_keepalive) | int(leg_padding) << 1
    ecs_bytes = b""
    if upstream_ecs is not None:
        ecs_flags, ecs_bytes = upstream_ecs
        flags |= ecs_flags
    return u16(uid) + bytes([flags]) + u16(timeout) + u16(rcode) + u16(grow) + ecs_bytes + msg


def dns_reply(query_opt=False, keepalive=False, padding=False, retiring=False,
              own_question=True, cookie=False, upstream_ecs=False, client_ecs=False,
              idle=30, client_id=0x1234, grow=0, reply=b""):
    flags = (int(query_opt) | int(keepalive) << 1 | int(padding) << 2
             | int(retiring) << 3 | int(own_question) << 4 | int(cookie) << 5
             | int(upstream_ecs) << 6 | int(client_ecs) << 7)
    return bytes([flags, idle]) + u16(client_id) + u16(grow) + reply


def big_query_parts(total, with_opt, options=None):
    """A query of `total` bytes once grown: question, an authority NULL
    record filling the rest (zeros from growth); with an OPT (carrying
    `options`, by default a cookie) before it in the additional section
    when `with_opt`."""
    q = question()
    if with_opt:
        o = opt(option(10, bytes(8)) if options is None else options)
        head = header(5, 0x0100, ns=0, ar=2) + q + o + rr_head(b"\0", 10, 0)
    else:
        head = header(5, 0x0100, ns=1) + q + rr_head(b"\0", 10, 0)
    rdlen = total - len(head)
    return head[:-2] + u16(rdlen), rdlen


def seeds():
    s = {"framing": {}, "dns_query": {}, "dns_reply": {}, "proxy": {}}

    # --- dns_query -------------------------------------------------------
    q = s["dns_query"]
    q["a-no-opt"] = dns_query(msg=header(0x1111, 0x0100) + question())
    q["aaaa-opt"] = dns_query(msg=header(0x2222, 0x0100, ar=1) + question(qtype=28) + opt())
    q["opt-keepalive-padding-cookie"] = dns_query(
        leg_keepalive=True, leg_padding=True,
        msg=header(3, 0x0110, ar=1) + question()
        + opt(option(11) + COOKIE + option(12, bytes(20)), flags=0x8000))
    q["opt-padding-only"] = dns_query(
        leg_padding=True, msg=header(4, 0x0100, ar=1) + question() + opt(option(12)))
    q["opt-keepalive-with-value"] = dns_query(
        msg=header(5, 0x0100, ar=1) + question() + opt(option(11, b"\0\x10")))
    q["opt-badvers"] = dns_query(rcode=16, msg=header(6, 0x0100, ar=1) + question() + opt(version=1))
    q["opt-malformed-options"] = dns_query(
        msg=header(7, 0x0100, ar=1) + question() + opt(b"\0\x0a\0\x20ab"))
    q["two-opts"] = dns_query(msg=header(8, 0x0100, ar=2) + question() + opt() + opt())
    q["opt-owner-not-root"] = dns_query(
        msg=header(9, 0x0100, ar=1) + question() + b"\x01a" + opt()[1:])
    q["opt-then-tsig"] = dns_query(
        msg=header(10, 0x0100, ar=2) + question() + opt(option(12, bytes(4)))
        + rr(PTR12, 250, b"\x0bhmac-sha256\0" + bytes(16)))
    q["response-bit"] = dns_query(msg=header(11, 0x8100) + question())
    q["qdcount-2"] = dns_query(msg=header(12, 0x0100, qd=2) + question() + question())
    q["pointer-in-question"] = dns_query(msg=header(13, 0x0100) + b"\x01a\xc0\x0c" + u16(1) + u16(1))
    # Found by the replay of mutated seeds: bytes after the last record of
    # a query without OPT; the OPT added upstream came after them.
    q["regression-trailing-bytes-no-opt"] = dns_query(msg=header(14, 0x0100) + question() + b"\x01\x02\x03")
    q["answer-record-in-query"] = dns_query(msg=header(15, 0x0100, an=1) + question() + A)
    q["cd-bit-opcode-2"] = dns_query(msg=header(16, 0x1011, ar=1) + question() + opt(COOKIE))
    # Near 65535 bytes without OPT: the stream form used to add one anyway
    # and clamp its prefix (defect 2). Sizes around the two limits.
    for total in (65535, 65530, 65525, 65524, 65521, 65520, 65519):
        msg, rdlen = big_query_parts(total, False)
        # 65525 and up: the OPT alone no longer fits (defect 2).
        label = "regression-defect2-" if total >= 65525 else ""
        q[f"{label}big-{total}-no-opt"] = dns_query(grow=rdlen, msg=msg)
    for total in (65535, 65532, 65531, 65530):
        msg, rdlen = big_query_parts(total, True)
        # The OPT comes before the big record, which growth completes.
        q[f"big-{total}-opt"] = dns_query(grow=rdlen, msg=msg)

    # --upstream-ecs: dotgate's client subnet replaces the client's.
    other_net = ecs_option(1, 24, bytes([198, 51, 100]))
    q["ecs-v4-no-opt"] = dns_query(upstream_ecs=ecs("192.0.2.77"), msg=header(17, 0x0100) + question())
    q["ecs-v4-20-replaces-client"] = dns_query(
        upstream_ecs=ecs("192.0.2.77", v4=20),
        msg=header(18, 0x0100, ar=1) + question() + opt(COOKIE + other_net))
    q["ecs-v6-56-two-client-subnets-keepalive-padding"] = dns_query(
        leg_keepalive=True, leg_padding=True, upstream_ecs=ecs("2001:db8:1234:5678:9abc::1", v6=53),
        msg=header(19, 0x0100, ar=1) + question()
        + opt(other_net + option(11) + ecs_option(2, 48, bytes.fromhex("20010db8ffff")) + option(12, bytes(8))))
    q["ecs-v4-mapped"] = dns_query(
        upstream_ecs=ecs("mapped:203.0.113.9", v4=31, v6=64),
        msg=header(20, 0x0100, ar=1) + question() + opt())
    q["ecs-prefix-0"] = dns_query(upstream_ecs=ecs("192.0.2.77", v4=0), msg=header(21, 0x0100, ar=1) + question() + opt(other_net))
    q["ecs-v6-128"] = dns_query(upstream_ecs=ecs("2001:db8::ffff:1", v6=128), msg=header(22, 0x0100) + question())
    q["ecs-client-malformed-subnet"] = dns_query(
        upstream_ecs=ecs("192.0.2.77"),
        msg=header(23, 0x0100, ar=1) + question() + opt(option(8, b"\0\x07\x18\0abc")))
    q["ecs-no-room-for-opt"] = dns_query(
        upstream_ecs=ecs("192.0.2.77"), msg=header(24, 0x0100, ar=1) + question()
        + rr(PTR12, 250, b"\x0bhmac-sha256\0" + bytes(16)))
    q["ecs-off-client-subnet-kept"] = dns_query(msg=header(25, 0x0100, ar=1) + question() + opt(other_net + COOKIE))
    # Near 65535 bytes: room for dotgate's subnet (11 bytes for a /24) in
    # the UDP form but not with the stream form's keepalive request, or in
    # neither; the client's own dropped all the same.
    for total, client_sent in ((65524, True), (65522, False), (65520, True), (65513, False), (65535, True)):
        msg, rdlen = big_query_parts(total, True, other_net if client_sent else b"")
        q[f"ecs-big-{total}-opt{'-client-subnet' if client_sent else ''}"] = dns_query(
            upstream_ecs=ecs("192.0.2.77"), grow=rdlen, msg=msg)
    for total in (65524, 65520, 65513, 65509, 65500):
        msg, rdlen = big_query_parts(total, False)
        q[f"ecs-big-{total}-no-opt"] = dns_query(upstream_ecs=ecs("192.0.2.77"), grow=rdlen, msg=msg)

    # --- dns_reply -------------------------------------------------------
    r = s["dns_reply"]
    qs = header(0x4242, 0x8180, an=1) + question()
    r["a-no-opt"] = dns_reply(reply=qs + A)
    r["a-opt-query-opt"] = dns_reply(query_opt=True, reply=header(0x4242, 0x8180, an=1, ar=1) + question() + A + opt(payload=1232))
    r["a-no-opt-query-pads"] = dns_reply(query_opt=True, keepalive=True, padding=True, reply=qs + A)
    r["upstream-padding-keepalive-nsid"] = dns_reply(
        query_opt=True, padding=True,
        reply=header(1, 0x8180, an=1, ar=1) + question() + A
        + opt(option(12, bytes(77)) + NSID + option(11, b"\0\x09")))
    r["upstream-keepalive-client-none"] = dns_reply(
        query_opt=True, reply=header(1, 0x8180, an=1, ar=1) + question() + A + opt(option(11, b"\0\x09")))
    r["upstream-opt-client-no-opt"] = dns_reply(
        reply=header(1, 0x8180, an=1, ar=1) + question() + A + opt(COOKIE))
    r["opt-in-the-middle"] = dns_reply(
        query_opt=True, keepalive=True, padding=True, cookie=True,
        reply=header(2, 0x8180, an=1, ar=2) + question() + A
        + opt(option(12, bytes(9)) + NSID) + rr(PTR12, 1, bytes([192, 0, 2, 2])))
    r["two-opts"] = dns_reply(
        query_opt=True, padding=True,
        reply=header(3, 0x8180, an=1, ar=2) + question() + A + opt() + opt(option(12)))
    r["two-opts-client-no-opt"] = dns_reply(
        reply=header(3, 0x8180, an=1, ar=2) + question() + A + opt(NSID) + opt())
    r["extended-rcode-badcookie"] = dns_reply(
        query_opt=True, keepalive=True, cookie=True,
        reply=header(4, 0x8187, an=0, ar=1) + question() + opt(COOKIE, ext_rcode=1, flags=0x8000))
    r["tsig-last"] = dns_reply(
        query_opt=True, padding=True,
        reply=header(5, 0x8180, an=1, ar=1) + question() + A
        + rr(PTR12, 250, b"\x0bhmac-sha256\0" + bytes(16)))
    # Compression: a CNAME chain with pointers, a pointer loop in an owner
    # and one in RDATA (the OPT in the middle sends it through the decoder).
    cname = rr(PTR12, 5, b"\x03www" + PTR12)
    r["cname-compressed"] = dns_reply(query_opt=True, padding=True, reply=header(6, 0x8180, an=2, ar=1) + question() + cname + A + opt())
    body = header(7, 0x8180, an=1, ar=2) + question()
    loop_at = len(body)
    r["pointer-loop-owner"] = dns_reply(
        query_opt=True, keepalive=True,
        reply=body + rr(b"\xc0" + bytes([loop_at]), 1, bytes(4)) + opt(option(12)) + A)
    r["pointer-loop-rdata"] = dns_reply(
        query_opt=True, padding=True,
        reply=body + rr(PTR12, 5, b"\xc0" + bytes([loop_at + 12])) + opt(option(12)) + A)
    r["pointer-forward"] = dns_reply(
        query_opt=True,
        reply=header(8, 0x8180, an=1, ar=1) + question() + rr(b"\xc0\x7f", 1, bytes(4)) + opt(option(11, b"\0\x01")))
    r["mixed-case-question"] = dns_reply(
        own_question=False, reply=header(9, 0x8180, an=1) + question("ExAmPlE.CoM") + A)
    r["other-question"] = dns_reply(own_question=False, reply=header(9, 0x8180, an=1) + question("example.org") + A)
    # Question-less replies: FORMERR, SERVFAIL, NOTIMP, REFUSED accepted;
    # NOERROR and NXDOMAIN (defect 3) and others never.
    for rc in range(0, 11):
        label = "regression-defect3-" if rc == 3 else ""
        r[f"{label}no-question-rcode-{rc}"] = dns_reply(query_opt=True, reply=header(10, 0x8180 | rc, qd=0))
    r["not-a-response"] = dns_reply(reply=header(11, 0x0100, an=1) + question() + A)
    r["trailing-garbage"] = dns_reply(query_opt=True, padding=True, reply=qs + A + b"\xff" * 7)
    # Near 65535 bytes: one TXT-ish record whose RDATA comes from growth.
    for total, query_opt in ((65535, True), (65535, False), (65524, True), (65100, True), (65530, True)):
        head = header(12, 0x8180, an=1) + question() + rr_head(PTR12, 16, 0)
        rdlen = total - len(head)
        r[f"big-{total}-{'query-opt' if query_opt else 'no-opt'}"] = dns_reply(
            query_opt=query_opt, keepalive=query_opt, padding=query_opt,
            grow=rdlen, reply=head[:-2] + u16(rdlen))

    # --upstream-ecs: the upstream's client subnet is stripped when the
    # client sent none, at the end of the reply (in place) or before
    # another record (re-encoded), with or without options of the leg's.
    echo = ecs_option(1, 24, bytes([192, 0, 2]))
    r["ecs-strip-tail"] = dns_reply(
        query_opt=True, keepalive=True, upstream_ecs=True,
        reply=header(13, 0x8180, an=1, ar=1) + question() + A + opt(NSID + echo))
    r["ecs-strip-tail-leg-empty"] = dns_reply(
        query_opt=True, upstream_ecs=True,
        reply=header(13, 0x8180, an=1, ar=1) + question() + A + opt(echo))
    r["ecs-strip-middle"] = dns_reply(
        query_opt=True, padding=True, upstream_ecs=True,
        reply=header(14, 0x8180, an=1, ar=2) + question() + A + opt(echo + NSID) + rr(PTR12, 1, bytes([192, 0, 2, 2])))
    r["ecs-strip-middle-leg-empty"] = dns_reply(
        query_opt=True, upstream_ecs=True,
        reply=header(14, 0x8180, an=1, ar=2) + question() + A + opt(echo) + rr(PTR12, 1, bytes([192, 0, 2, 2])))
    r["ecs-strip-two-opts"] = dns_reply(
        query_opt=True, upstream_ecs=True,
        reply=header(15, 0x8180, an=1, ar=2) + question() + A + opt(echo) + opt(echo))
    r["ecs-strip-client-no-opt"] = dns_reply(
        upstream_ecs=True, reply=header(15, 0x8180, an=1, ar=1) + question() + A + opt(echo))
    r["ecs-client-sent-kept"] = dns_reply(
        query_opt=True, upstream_ecs=True, client_ecs=True, padding=True,
        reply=header(16, 0x8180, an=1, ar=1) + question() + A + opt(echo))
    r["ecs-off-kept-middle"] = dns_reply(
        query_opt=True, keepalive=True,
        reply=header(16, 0x8180, an=1, ar=2) + question() + A + opt(echo) + rr(PTR12, 1, bytes([192, 0, 2, 2])))

    # --- framing ---------------------------------------------------------
    f = s["framing"]
    m1 = header(1, 0x0100) + question()
    m2 = header(2, 0x0100, ar=1) + question() + opt(option(12, bytes(60)))
    frames = u16(len(m1)) + m1 + u16(len(m2)) + m2
    f["two-frames-whole"] = bytes([0]) + frames
    f["two-frames-bytewise"] = bytes([1, 1]) + frames
    f["two-frames-odd-chunks-and-pending"] = bytes([4, 3, 0, 7, 200]) + frames
    f["partial-prefix"] = bytes([0]) + frames + b"\x00"
    f["partial-body"] = bytes([1, 5]) + frames + u16(40) + bytes(10)
    f["too-short-after-frames"] = bytes([2, 2, 0]) + frames + u16(11) + bytes(11)
    f["zero-length"] = bytes([0]) + u16(0)
    f["empty"] = b""
    # Compact mode (bit 7): [len, fill] triples.
    f["compact-max-frames"] = bytes([0x82, 130, 0]) + u16(65535) + b"\x04" + u16(12) + b"\x05" + u16(4096) + b"\x06"
    f["compact-grow-then-short"] = bytes([0x81, 255]) + u16(5000) + b"\x01" + u16(70) + b"\x02" + u16(3) + b"\x03"
    f["compact-truncated-prefix"] = bytes([0x80]) + u16(300) + b"\x01" + b"\x01"
    # The shared message budget (first byte: bit 3 three readers, bits
    # 4-6 budget past the least in 8 KiB steps): two 64 KiB messages at
    # once do not fit, so readers wait for each other; a small message
    # between, a stream cut inside a large one (its reader holds budget as
    # it ends), Pendings that drop a waiting read.
    f["budget-two-readers-wait"] = bytes([0x82, 200, 0]) + u16(65535) + b"\x01" + u16(65535) + b"\x02"
    f["budget-three-readers-pending"] = (bytes([0x80 | 0x08 | 0x10 | 3, 0, 140, 5])
                                        + u16(65535) + b"\x01" + u16(12) + b"\x02"
                                        + u16(30000) + b"\x03" + u16(65535) + b"\x04")
    f["budget-truncated-holding"] = bytes([0x82, 150, 0]) + u16(65535) + b"\x01" + u16(60000) + b"\x02" + b"\xff\xff"

    # --- proxy -----------------------------------------------------------
    p = s["proxy"]
    tls = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    sig = b"\r\n\r\n\0\r\nQUIT\n"

    def v2(cmd, fam, payload):
        return sig + bytes([cmd, fam]) + u16(len(payload)) + payload

    v4 = bytes([192, 0, 2, 7, 198, 51, 100, 1]) + u16(56324) + u16(853)
    v6 = bytes.fromhex("20010db8000000000000000000000007" "20010db8000000000000000000000001") + u16(4000) + u16(853)
    p["v1-tcp4"] = bytes([0]) + b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 853\r\n" + tls
    p["v1-tcp4-bytewise"] = bytes([1, 1]) + b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 853\r\n" + tls
    p["v1-tcp6"] = bytes([2, 9, 0]) + b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 853\r\n" + tls
    p["v1-unknown"] = bytes([0]) + b"PROXY UNKNOWN\r\n" + tls
    p["v1-unknown-with-fields"] = bytes([0]) + b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n" + tls
    p["v1-crlf-in-first-12"] = bytes([0]) + b"PROXY \r\nTCP4 1.2.3.4 5.6.7.8 1 2\r\n"
    p["v1-longest-line"] = bytes([0]) + b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n" + tls
    p["v1-no-crlf"] = bytes([0]) + b"PROXY TCP4 " + b"1" * 120 + b"\r\n"
    p["v1-bad-port"] = bytes([0]) + b"PROXY TCP4 192.0.2.7 198.51.100.1 +80 853\r\n"
    p["v1-eof"] = bytes([0]) + b"PROXY TCP4 1.2.3.4"
    p["v2-inet"] = bytes([0]) + v2(0x21, 0x11, v4) + tls
    p["v2-inet-chunked"] = bytes([3, 5, 0, 2]) + v2(0x21, 0x11, v4 + option(4, b"\0\0")) + tls
    p["v2-inet6-tlv"] = bytes([0]) + v2(0x21, 0x21, v6 + bytes([1, 0, 1, 9])) + tls
    p["v2-local"] = bytes([0]) + v2(0x20, 0x00, b"") + tls
    p["v2-unix"] = bytes([0]) + v2(0x21, 0x31, bytes(216)) + tls
    p["v2-udp"] = bytes([0]) + v2(0x21, 0x12, v4)
    p["v2-short-inet6"] = bytes([0]) + v2(0x21, 0x21, bytes(35))
    p["v2-too-long"] = bytes([0]) + sig + bytes([0x21, 0x11]) + u16(4097)
    p["v2-eof-in-payload"] = bytes([0]) + sig + bytes([0x21, 0x11]) + u16(12) + bytes(4)
    p["missing"] = bytes([0]) + tls + bytes(4)
    return s


def tls_stream_seeds():
    """Programs for the tls_stream target (layout: tls_stream in
    tests/fuzz_props/tls_stream.rs): a flags byte (bit 0 TLS 1.2, bits 1-3
    the socket buffer, 1 KiB << n), then operations."""
    tls13, tls12, tiny = 4 << 1, 1 | 4 << 1, 0
    write = lambda n: bytes([0]) + u16(n)
    key_update, close, fin, deliver_all = b"\1", b"\2", b"\3", b"\5"
    deliver = lambda b: bytes([4, b])
    flip = lambda pos, bit: bytes([6]) + u16(pos) + bytes([bit])
    inject = lambda pos, data: bytes([9]) + u16(pos) + bytes([len(data)]) + data
    flood = lambda pos, reps, pattern: (bytes([10]) + u16(pos) + bytes([len(pattern) - 1])
                                        + u16(reps) + pattern)
    advance = lambda b: bytes([11, b])
    echo = deliver_all + write(20) + write(300) + deliver_all + deliver_all + close + deliver_all
    t = {}
    t["tls13-echo"] = bytes([tls13]) + echo
    t["tls12-echo"] = bytes([tls12]) + echo
    t["tls13-key-update"] = (bytes([tls13]) + deliver_all + write(20) + deliver_all + key_update
                             + write(30) + deliver_all + key_update + write(1) + deliver_all)
    t["tls13-chunked"] = (bytes([tiny]) + deliver(0) * 7 + deliver(3) + deliver(140)
                          + deliver_all + write(40000) + write(12) + deliver(127) * 3
                          + deliver(200) * 4 + advance(20) + deliver_all)
    t["tls12-chunked"] = bytes([tls12 & ~(7 << 1)]) + t["tls13-chunked"][1:]
    t["tls13-flipped-record"] = (bytes([tls13]) + deliver_all + write(20) + deliver_all
                                 + write(20) + flip(10, 3) + deliver_all)
    # A ClientKeyExchange announcing 65535 bytes, then one-byte fragments:
    # the server must refuse it once it holds MAX_HELD bytes.
    t["tls12-handshake-flood"] = (bytes([tls12]) + deliver(255)
                                  + inject(0, bytes([0x16, 3, 3, 0, 4, 0x10, 0, 0xff, 0xff]))
                                  + flood(9, 30000, bytes([0x16, 3, 3, 0, 1, 0])) + deliver_all)
    # A ClientHello of 65535 bytes in one-byte fragments, before the real
    # one: refused once the hello's records pass 64 KiB.
    t["hello-in-fragments"] = (bytes([tls13]) + inject(0, bytes([0x16, 3, 1, 0, 4, 1, 0, 0xff, 0xff]))
                               + flood(9, 65535, bytes([0x16, 3, 1, 0, 1, 0])) + deliver_all)
    t["tls13-partial-record-times-out"] = (bytes([tls13]) + deliver_all + write(20)
                                           + deliver_all + write(20) + deliver(10)
                                           + advance(200))
    t["garbage-hello"] = bytes([tls13]) + inject(0, bytes([0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5]))
    t["close-notify-mid-handshake"] = bytes([tls13]) + close + deliver_all
    t["fin-mid-hello"] = bytes([tls13]) + deliver(10) + fin
    return {"tls_stream": t}


def doh_request_seeds():
    """Selector byte, then path, query, content type and forwarding header
    separated by NUL bytes (tests/fuzz_props/mod.rs, doh_request)."""
    def req(selector, *parts):
        return bytes([selector]) + b"\0".join(parts)
    t = {}
    t["get"] = req(0, b"/dns-query", b"dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB",
                   b"application/dns-message", b"192.0.2.7, 10.0.0.1")
    t["id-padded"] = req(1, b"/dns-query/alice", b"ct&dns=AAE=&x=1",
                         b"Application/DNS-Message; charset=x",
                         b'for=192.0.2.9;proto=https, for="[2001:db8::1]:443"')
    t["bad"] = req(2, b"/dns-query/a/b", b"dns=***", b"text/plain", b"unknown, _hidden")
    t["untrusted"] = req(3, b"/", b"name=x", b"", b"for=10.1.1.1")
    t["v6"] = req(0, b"/dns-queryx", b"dns=", b"application/dns-message-x",
                  b"[::ffff:192.0.2.1]:80, 2001:DB8:0:0::1")
    return {"doh_request": t}


def h2_session_seeds():
    """Client byte streams for the h2_session target (layout: h2_session
    in tests/fuzz_props/h2_session.rs): a flags byte (bit 0 prefixes the
    preface and an empty SETTINGS, bits 1-2 the limits: 0 production's, 1
    tight, 2 the unit tests', 3 none; bits 4-6 the schedule's length), the
    chunk schedule (low 5 bits the chunk's size, high 3 bits what follows
    it: 2 large answers, 3 GOAWAY, 4 expire bodies, 5 release, 6 hold, 7 a
    bogus answer), then the client's bytes."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    DATA, HEADERS, PRIORITY, RST, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONT = \
        0, 1, 2, 3, 4, 6, 7, 8, 9
    END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 1, 1, 4, 8, 0x20

    def frame(kind, flags, stream, payload=b""):
        return (struct.pack(">I", len(payload))[1:] + bytes([kind, flags])
                + struct.pack(">I", stream) + payload)

    def field(n, v, indexing=False):
        return bytes([0x40 if indexing else 0, len(n)]) + n + bytes([len(v)]) + v

    def block(method=b"GET", path=b"/dns-query?dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB",
              extra=()):
        out = field(b":method", method) + field(b":scheme", b"https") + field(b":path", path)
        for n, v in extra:
            out += field(n, v)
        return out

    def get(stream, path=None):
        b = block() if path is None else block(path=path)
        return frame(HEADERS, END_HEADERS | END_STREAM, stream, b)

    post_head = block(b"POST", b"/dns-query", [(b"content-type", b"application/dns-message")])
    query = bytes.fromhex("abcd01000001000000000000076578616d706c6503636f6d0000010001")

    def settings(*values):
        return frame(SETTINGS, 0, 0, b"".join(u16(i) + struct.pack(">I", v) for i, v in values))

    def wu(stream, inc):
        return frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", inc))

    def seed(flags, schedule, stream_bytes, limits=0, framed=True):
        f = (1 if framed else 0) | limits << 1 | len(schedule) << 4 | flags
        return bytes([f]) + bytes(schedule) + stream_bytes

    h = {}
    h["get"] = seed(0, [0x05], get(1) + get(3))
    h["get-indexed"] = seed(8, [], frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                         bytes([0x82, 0x87, 0x44, 2]) + b"/x"
                                         + field(b"x-forwarded-for", b"192.0.2.1", True))
                        + frame(HEADERS, END_HEADERS | END_STREAM, 3,
                                bytes([0x82, 0x87, 0x44, 2]) + b"/y" + bytes([0xbe])))
    padded = lambda data, pad: bytes([pad]) + data + bytes(pad)
    h["post-padded"] = seed(0, [0x10, 0x03, 0x60], (
        frame(HEADERS, END_HEADERS | PADDED | PRIO, 1,
              bytes([3]) + bytes([0, 0, 0, 0, 16]) + post_head + bytes(3))
        + frame(DATA, PADDED, 1, padded(query[:10], 4))
        + frame(DATA, 0, 1, query[10:20])
        + frame(DATA, PADDED | END_STREAM, 1, padded(query[20:], 0))))
    head = block()
    h["continuation"] = seed(0, [0x0c], (
        frame(HEADERS, END_STREAM, 1, head[:7])
        + frame(CONT, 0, 1, head[7:20]) + frame(CONT, END_HEADERS, 1, head[20:])
        + get(3)))
    h["rapid-reset"] = seed(0, [0xc0], b"".join(
        get(s) + frame(RST, 0, s, struct.pack(">I", 8)) for s in range(1, 2 * 40, 2)),
        limits=2)
    h["rapid-reset-answered"] = seed(0, [0x1f, 0x1f], b"".join(
        get(s) + (frame(RST, 0, s, struct.pack(">I", 8)) if s % 4 == 1 else b"")
        for s in range(1, 2 * 40, 2)), limits=2)
    h["settings-ping-window"] = seed(0, [0x09, 0x11], (
        settings((1, 0), (2, 0), (3, 100), (4, 100000), (5, 32768), (6, 8192), (0x99, 7))
        + frame(PING, 0, 0, b"12345678") + frame(PING, ACK, 0, b"87654321")
        + frame(SETTINGS, ACK, 0) + wu(0, 1000) + get(1) + wu(1, 5)
        + frame(PRIORITY, 0, 3, bytes([0, 0, 0, 1, 16])) + frame(0x42, 0, 5, b"ext")
        + frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0))))
    h["flow-control"] = seed(0, [0x4f, 0x4d, 0x4d, 0x4d, 0x50], (
        settings((4, 1), (5, 20000)) + get(1) + get(3)
        + wu(1, 1) + wu(3, 1) + wu(1, 100) + wu(0, 1) + wu(3, 5000) + wu(1, 30000)
        + settings((4, 70000)) + wu(0, 200000) + wu(3, 0x7fffffff)))
    h["bad-preface"] = seed(0, [], b"GET / HTTP/1.1\r\nHost: dns.test\r\n\r\n", framed=False)
    h["raw-preface"] = seed(0, [0x01, 0x02, 0x07], preface + settings() + get(1), framed=False)
    h["frame-too-large"] = seed(0, [], get(1) + frame(DATA, 0, 1, bytes(16385)))
    h["body-timeout"] = seed(0, [0x81], (
        frame(HEADERS, END_HEADERS, 1,
              block(b"POST", b"/dns-query", [(b"content-type", b"application/dns-message"),
                                              (b"content-length", b"100")]))
        + frame(DATA, 0, 1, query) + bytes(40)))
    h["body-too-large"] = seed(0, [0x10], (
        frame(HEADERS, END_HEADERS, 1,
              block(b"POST", b"/dns-query", [(b"content-length", b"70000")]))
        + frame(DATA, 0, 1, bytes(300)) + get(3)))
    h["refused-streams"] = seed(0, [0xc0 | 0x10, 0x0f], b"".join(get(s) for s in range(1, 30, 2)),
                                limits=1)
    h["goaway"] = seed(0x80, [0x60, 0x1f], b"".join(get(s) for s in range(1, 12, 2)))
    h["bogus-answers"] = seed(0, [0xe0, 0xff], b"".join(get(s) for s in range(1, 12, 2)))
    h["release"] = seed(0, [0xa0 | 0x11], b"".join(get(s) for s in range(1, 20, 2)))
    return {"h2_session": h}


def main():
    for target, files in {**seeds(), **tls_stream_seeds(), **doh_request_seeds(),
                         **h2_session_seeds()}.items():
        d = os.path.join(CORPUS, target)
        os.makedirs(d, exist_ok=True)
        for fname, data in files.items():
            if not fname.startswith("regression-"):
                fname = "seed-" + fname
            with open(os.path.join(d, fname), "wb") as fh:
                fh.write(data)
    print(f"seeds written under {CORPUS}", file=sys.stderr)


if __name__ == "__main__":
    main()
