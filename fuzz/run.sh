#!/usr/bin/env bash
# Fuzzes dotgate's parsers; see fuzz/README.md.
#
#   fuzz/run.sh [SECONDS] [TARGET...]   run each target for SECONDS (default
#                                       60), one after the other, nice'd;
#                                       exits non-zero if any target crashed
#   fuzz/run.sh cmin [TARGET...]        minimise fuzz/corpus/<target> together
#                                       with what runs found (fuzz/work), keeping
#                                       every seed-* and regression-* file
#
# cmin merges by edge coverage (hit counts ignored) and then keeps at most
# CMIN_MAX_FILES (default 80) found inputs per target: libFuzzer's merge
# takes inputs smallest first, so the smallest ones are those that brought
# the most coverage; the long tail mostly covers hickory-proto's decoder.
#
# New inputs found by a run go to fuzz/work/<target> (not committed); the
# committed corpus fuzz/corpus/<target> is only read. Crashes are written to
# fuzz/artifacts/<target>/ and logs to fuzz/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")"

ALL_TARGETS=(framing dns_query dns_reply proxy tls_stream doh_request hpack_decode h2_session)
NICE=(nice -n 19)

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    "${NICE[@]}" cargo +nightly install cargo-fuzz --locked
fi

mode=run
secs=60
if [[ $# -gt 0 && $1 == cmin ]]; then
    mode=cmin
    shift
elif [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
    secs=$1
    shift
fi
if [[ $secs -eq 0 ]]; then
    echo "SECONDS must be positive (libFuzzer takes 0 as no limit)" >&2
    exit 2
fi
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${ALL_TARGETS[@]}")

"${NICE[@]}" cargo +nightly fuzz build
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin=target/$triple/release
mkdir -p logs

if [[ $mode == cmin ]]; then
    for t in "${targets[@]}"; do
        mkdir -p "work/$t"
        tmp=$(mktemp -d)
        "${NICE[@]}" "$bin/$t" -merge=1 -use_counters=0 -rss_limit_mb=4096 \
            "$tmp" "corpus/$t" "work/$t" >"logs/$t.cmin.log" 2>&1
        # Of the merged inputs (hash names), the CMIN_MAX_FILES smallest.
        find "$tmp" -maxdepth 1 -type f ! -name 'seed-*' ! -name 'regression-*' -printf '%s %p\n' |
            sort -n -k1,1 -k2,2 | tail -n +"$((${CMIN_MAX_FILES:-80} + 1))" | cut -d' ' -f2- |
            xargs -r rm --
        # Hand-made seeds and regression inputs stay, whatever their coverage.
        # (libFuzzer names its files by their SHA-1: drop those copies.)
        for f in "corpus/$t"/seed-* "corpus/$t"/regression-*; do
            [[ -f $f ]] || continue
            rm -f "$tmp/$(sha1sum "$f" | cut -d' ' -f1)"
            cp "$f" "$tmp/"
        done
        rm -rf "corpus/$t"
        mv "$tmp" "corpus/$t"
        chmod 755 "corpus/$t"
        echo "$t: $(find "corpus/$t" -type f | wc -l) files, $(du -sh "corpus/$t" | cut -f1)"
    done
    exit 0
fi

failed=()
for t in "${targets[@]}"; do
    mkdir -p "work/$t" "artifacts/$t"
    echo "== $t: ${secs}s"
    set +e
    "${NICE[@]}" "$bin/$t" "work/$t" "corpus/$t" \
        -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
        >"logs/$t.log" 2>&1
    rc=$?
    set -e
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "logs/$t.log" || true
    if [[ $rc -ne 0 ]]; then
        echo "!! $t failed (exit $rc): see fuzz/logs/$t.log and fuzz/artifacts/$t/"
        failed+=("$t")
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "crashed: ${failed[*]}"
    exit 1
fi
