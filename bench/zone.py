#!/usr/bin/env python3
"""Write the benchmark zone and the query file for bench/run.sh.

  zone.py DIR [--names 3000] [--queries 50000] [--seed 7858]

DIR/bench.test.zone: `bench.test.` with --names hosts, each with an A, an AAAA
and a short TXT record, and ten names with a ~1500-byte TXT answer (more than
a UDP reply without EDNS may carry, so a frontend that forwards over UDP has to
retry them over TCP). Every TTL is 0.

DIR/queries.txt: dnsperf's input, one `NAME TYPE` a line, shuffled with a fixed
seed so every frontend gets the same stream: 55% A, 25% AAAA, 12% short TXT,
6% names that do not exist (NXDOMAIN), 2% large TXT.
"""
import argparse
import os
import random

ORIGIN = "bench.test."
LARGE = 10


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--names", type=int, default=3000)
    ap.add_argument("--queries", type=int, default=50000)
    ap.add_argument("--seed", type=int, default=7858)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)

    with open(os.path.join(a.dir, "bench.test.zone"), "w") as z:
        z.write(f"$ORIGIN {ORIGIN}\n$TTL 0\n")
        z.write("@ SOA ns hostmaster 1 3600 600 86400 0\n@ NS ns\nns A 127.0.0.1\n")
        z.write("dot A 127.0.0.1\n")
        for i in range(a.names):
            z.write(f"n{i} A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n")
            z.write(f"n{i} AAAA 2001:db8::{i:x}\n")
            z.write(f'n{i} TXT "name {i} of the dotgate benchmark zone"\n')
        for i in range(LARGE):
            chunk = (f"large-{i}-" * 40)[:250]
            z.write(f"large{i} TXT" + f' "{chunk}"' * 6 + "\n")

    rng = random.Random(a.seed)
    with open(os.path.join(a.dir, "queries.txt"), "w") as q:
        for _ in range(a.queries):
            r = rng.random()
            name = f"n{rng.randrange(a.names)}.{ORIGIN}"
            if r < 0.55:
                q.write(f"{name} A\n")
            elif r < 0.80:
                q.write(f"{name} AAAA\n")
            elif r < 0.92:
                q.write(f"{name} TXT\n")
            elif r < 0.98:
                q.write(f"missing{rng.randrange(10**6)}.{ORIGIN} A\n")
            else:
                q.write(f"large{rng.randrange(LARGE)}.{ORIGIN} TXT\n")


if __name__ == "__main__":
    main()
