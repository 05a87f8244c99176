#!/usr/bin/env python3
"""The table of bench/run.sh: dotgate, dnsdist and their ratio, from results.jsonl.

  report.py results.jsonl

Each figure is the median over the rounds. "Per frontend core" divides the
work done (queries answered, handshakes completed) by the CPU time the
frontend used for it, so it does not depend on which side of the machine was
the bottleneck. The DNS over HTTPS rows (h2load) get a table of their own,
with unbound beside dnsdist when it was measured. Notes under the tables flag
runs that are less trustworthy.
"""
import json
import statistics
import sys

FRONTENDS = ("dotgate", "dnsdist")
DOH_FRONTENDS = ("dotgate", "dnsdist", "unbound")


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    meta = next((r for r in rows if r["test"] == "meta"), {})

    def runs(test, name, **match):
        return [r for r in rows if r["test"] == test and r.get("frontend") == name
                and all(r.get(k) == v for k, v in match.items())]

    table = []  # (label, {frontend: value}, digits, better)

    def row(label, value, digits=0, better="higher", test="qps", **match):
        per = {n: median(value(r) for r in runs(test, n, **match)) for n in DOH_FRONTENDS}
        if any(v is not None for v in per.values()):
            table.append((label, per, digits, better))

    per_core_q = lambda r: r["completed"] / r["fe_cpu_s"] if r["fe_cpu_s"] else None
    row("QPS, frontend on a whole core", lambda r: r["qps"], quota_pct=0)
    row("QPS per frontend core", per_core_q, quota_pct=0)
    cap = meta.get("fe_quota", 0)
    if cap:
        row(f"QPS, frontend capped at {cap}% of a core", lambda r: r["qps"], quota_pct=cap)
        row(f"QPS per frontend core, capped at {cap}%", per_core_q, quota_pct=cap)
    row("full TLS handshakes per second", lambda r: r["rate"], test="handshakes")
    row("full TLS handshakes per frontend core",
        lambda r: r["handshakes"] / r["fe_cpu_s"] if r["fe_cpu_s"] else None, test="handshakes")
    row("resumed TLS handshakes per frontend core",
        lambda r: r["handshakes"] / r["fe_cpu_s"] if r["fe_cpu_s"] else None, test="resumed")
    offered = next((r["offered"] for r in rows if r["test"] == "latency"), None)
    if offered:
        row(f"p99 latency (ms) at {offered:,} QPS offered", lambda r: r["p99_ms"], 2, "lower",
            test="latency")
    idle = next((r["count"] for r in rows if r["test"] == "idle"), None)
    if idle:
        row(f"KiB per idle TLS connection ({idle:,} held)", lambda r: r["kib_per_conn"], 1,
            "lower", test="idle")

    dot_rows = table[:]
    table.clear()
    doh = f"{meta.get('doh_clients', '?')} HTTP/2 connections x {meta.get('doh_streams', '?')} streams"
    row(f"DoH QPS ({doh}, POST)", lambda r: r["qps"], test="doh_qps")
    row("DoH QPS per frontend core", per_core_q, test="doh_qps")
    offered = next((r["offered"] for r in rows if r["test"] == "doh_latency"), None)
    if offered:
        row(f"DoH p99 latency (ms) at {offered:,} QPS offered", lambda r: r["p99_ms"], 2, "lower",
            test="doh_latency")
    idle = {r["frontend"]: r["count"] for r in rows if r["test"] == "doh_idle"}
    if idle:
        held = f"{idle.get('dotgate', max(idle.values())):,} held" + "".join(
            f"; {n} {c:,}" for n, c in idle.items() if c != idle.get("dotgate"))
        row(f"KiB per idle HTTP/2 connection ({held})", lambda r: r["kib_per_conn"], 1,
            "lower", test="doh_idle")
    doh_rows = table[:]

    print(f"dotgate beside dnsdist, one run: {meta.get('date', '?')}, "
          f"{meta.get('rounds', '?')} round(s) of {meta.get('duration', '?')} s, medians")
    print(f"dotgate {(meta.get('dotgate', '?').split() + ['?'])[1]}, dnsdist {meta.get('dnsdist', '?')}, "
          f"dnsperf {meta.get('dnsperf', '?')}, NSD {meta.get('nsd', '?')}, "
          f"OpenSSL {meta.get('openssl', '?')}, kernel {meta.get('kernel', '?')}, {meta.get('cpu', '?')}")
    if doh_rows:
        print(f"DoH: h2load {meta.get('h2load', '?').split('/')[-1]}"
              + (f", unbound {meta['unbound']}" if meta.get("unbound") else ""))
    print_table(dot_rows, FRONTENDS)
    print_table(doh_rows, [n for n in DOH_FRONTENDS if any(p[n] is not None for _, p, _, _ in doh_rows)])

    notes = []
    busy = []
    for r in rows:
        if r["test"] == "meta":
            continue
        capped = f" capped at {r['quota_pct']}%" if r.get("quota_pct") else ""
        what = f"{r['test']}{capped} {r['frontend']}" + (f" round {r['round']}" if "round" in r else "")
        if r.get("lost"):
            notes.append(f"{what}: {r['lost']} queries lost")
        if r["test"] == "latency" and r["qps"] < 0.95 * r["offered"]:
            notes.append(f"{what}: {r['qps']:.0f} QPS answered of {r['offered']} offered")
        if r["test"] == "doh_latency" and r["qps"] < 0.95 * r["offered"]:
            notes.append(f"{what}: {r['qps']:.0f} QPS answered of {r['offered']} offered")
        if r["test"].startswith("doh_") and (r.get("failed") or r.get("errored") or r.get("timeouts")):
            notes.append(f"{what}: {r.get('failed', 0)} requests failed, {r.get('errored', 0)} errored, "
                         f"{r.get('timeouts', 0)} timed out")
        elif r.get("failed"):
            notes.append(f"{what}: {r['failed']} connections failed")
        if r["test"] in ("idle", "doh_idle") and r["alive"] < r["count"]:
            notes.append(f"{what}: only {r['alive']} of {r['count']} connections stayed open")
        if "other_pct" in r:
            busy.append(r["other_pct"])
    noisy = [b for b in busy if b > 10]
    if noisy:
        notes.append(f"in {len(noisy)} of {len(busy)} timed runs other processes took more than 10% "
                     f"of core 1 (up to {max(noisy):.0f}%): the machine was not quiet and these "
                     "figures are noisy; measure again on a quiet machine before quoting them")
    kinds = [("qps", {"quota_pct": 0}, "qps")]
    if cap:
        kinds.append(("qps", {"quota_pct": cap}, f"qps capped at {cap}%"))
    kinds += [("handshakes", {}, "handshakes"), ("resumed", {}, "resumed"),
              ("latency", {}, "latency"), ("doh_qps", {}, "doh qps"),
              ("doh_latency", {}, "doh latency")]
    shares = []
    for test, match, label in kinds:
        for n in DOH_FRONTENDS:
            share = median(100 * r["fe_cpu_s"] / r["wall_s"] for r in runs(test, n, **match))
            if share is not None:
                shares.append(f"{label} {n} {share:.0f}%")
    print()
    print("frontend CPU use (% of one core, median): " + ", ".join(dict.fromkeys(shares)))
    for n in notes:
        print("note: " + n)


def print_table(table, names):
    """Rows of {frontend: value}, one column per name and dotgate's ratio to each other."""
    if not table:
        return
    others = [n for n in names if n != "dotgate"]
    width = max(len(t[0]) for t in table)
    print()
    print(f"{'':{width}}" + "".join(f"  {n:>10}" for n in names)
          + "".join(f"  {'dotgate/' + n:>15}" for n in others))
    for label, per, digits, better in table:
        line = f"{label:{width}}" + "".join(f"  {fmt(per[n], digits):>10}" for n in names)
        for n in others:
            a, b = per["dotgate"], per[n]
            line += f"  {(f'{a / b:.2f}' if a is not None and b else '-'):>15}"
        print(f"{line}  ({better} is better)")


if __name__ == "__main__":
    main()
