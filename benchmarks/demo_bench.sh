#!/usr/bin/env bash
# Wall time and peak memory (max RSS of the process tree's largest member, via GNU time) of the
# demo: synthesis + the full study. Usage: benchmarks/demo_bench.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/_work/demo-bench}"
rm -rf "$out"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {print $2/1048576 " GiB"}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/time -v .venv/bin/securefed demo --out "$out" 2> "$out.time" | tail -20 || { tail -30 "$out.time"; exit 1; }
grep -E "Elapsed|Maximum resident" "$out.time"
