#!/usr/bin/env bash
# The whole non-private study on fets-1251-shifted (issue 32, part 4: at most 90 minutes on 2
# cores): features of 1251 cases, the paper's clustering, 20 global FedAvg rounds at 23 sites,
# 5 finetuning rounds per cluster, the local and centralized baselines, evaluation of every
# method, the report. Needs benchmarks/fets1251_shifted.sh's work folder (the federation and the
# reference features). Resumes.
# Usage: benchmarks/fets1251_study.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
W="${1:-benchmarks/_work/f1251s}"
SF=.venv/bin/securefed
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
[ -f "$W/study-protocol/protocol.toml" ] || .venv/bin/python benchmarks/fets1251_protocol.py \
    "$W/ref-features" "$W/study-protocol" --study
t0=$(date +%s)
rc=0
/usr/bin/time -v $SF run "$W/study-protocol/protocol.toml" --data "$W/data" \
    --truth "$W/data/truth.csv" --out "$W/study" --workers 2 --device cpu 2> "$W/study.time" || rc=$?
grep -E "Elapsed|Maximum resident" "$W/study.time" || true
echo "study: $(( $(date +%s) - t0 )) s (exit $rc)"
exit $rc
