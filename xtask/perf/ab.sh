#!/bin/bash
# Same-hour CPU comparison of daemon builds on a held bench host (docs/benchmarks.md, issue 17).
#
#   BENCH_HOLD=guests BENCH_QEMU=100 BENCH_FIXTURE= setsid cargo xtask bench host > /tmp/hold.log &
#   xtask/perf/ab.sh ROUNDS SCRAPES "BIN [ARGS]" "BIN [ARGS]" ...
#
# Each round starts every build in turn on the held host's root (--qm-mode off, --ebpf on, every
# timed scrape a collection of its own), scrapes it SCRAPES times 20 ms apart with curl and
# reports the daemon's CPU (perf stat task-clock over all its threads), minor faults and context
# switches per scrape, and its RSS after. This machine's speed moves 2x within minutes: only
# medians of alternating rounds compare. ARGS go before the host flags, so a build can be run
# with an environment: "env VAR=1 BIN". Stop the host with pkill -TERM -f "xtask bench host" and
# remove target/bench/qemu-100/etc/pve/.vmlist after (the held case writes it).
set -eu
ROOT=$(grep -o 'pve-exporter --root .*' "${HOLD_LOG:-/tmp/hold.log}" | tail -1 | awk '{print $3}')
[ -n "$ROOT" ] || { echo "no held host in ${HOLD_LOG:-/tmp/hold.log}" >&2; exit 2; }
R=$1; N=$2; shift 2; SPECS=("$@")
port=19400
declare -A all
for r in $(seq 1 "$R"); do
  for spec in "${SPECS[@]}"; do
    port=$((port+1))
    # shellcheck disable=SC2086
    set -- $spec
    bin=$1; shift
    "$bin" "$@" --root "$ROOT" --ebpf on --qm-mode off --port $port --host 127.0.0.1 \
      --min-collection-interval 0 >/dev/null 2>/tmp/ab.err &
    pid=$!
    for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/metrics" && break; sleep 0.2; done
    for _ in 1 2 3 4 5; do curl -sf -o /dev/null "http://127.0.0.1:$port/metrics"; done
    perf stat -e task-clock,page-faults,context-switches -p $pid -x, -o /tmp/ab.perf -- bash -c \
      "for i in \$(seq $N); do curl -sf -o /dev/null -H 'Accept: application/openmetrics-text' http://127.0.0.1:$port/metrics; sleep 0.02; done"
    cpu=$(grep task-clock /tmp/ab.perf | cut -d, -f1)
    pf=$(grep page-faults /tmp/ab.perf | cut -d, -f1)
    cs=$(grep context-sw /tmp/ab.perf | cut -d, -f1)
    rss=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
    kill $pid; wait $pid 2>/dev/null || true
    ms=$(echo "$cpu / $N" | bc -l)
    all[$spec]="${all[$spec]:-} $ms"
    printf "round %d %-50s cpu=%6.2f ms faults=%4d cs=%3d rss=%d kB\n" "$r" "$spec" "$ms" $((pf / N)) $((cs / N)) "$rss"
  done
done
echo "medians:"
for spec in "${SPECS[@]}"; do
  printf "  %-50s %6.2f ms\n" "$spec" "$(echo ${all[$spec]} | tr ' ' '\n' | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')"
done
