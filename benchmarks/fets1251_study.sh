#!/usr/bin/env bash
# The whole non-private study on fets-1251-shifted (issue 32, part 4: at most 90 minutes on 2
# cores): features of 1251 cases, the paper's clustering, 20 global FedAvg rounds at 23 sites,
# 5 finetuning rounds per cluster, the local and centralized baselines, evaluation of every
# method, the report. Needs benchmarks/fets1251_shifted.sh's work folder (the federation and the
# reference features). Resumes.
# Usage: benchmarks/fets1251_study.sh [WORKDIR] [plain|private]
#   private: secure-aggregate features at epsilon 1 per patient (fets1251_protocol.py --private);
#   its protocol and run go to WORKDIR/study-protocol-private and WORKDIR/study-private.
set -euo pipefail
cd "$(dirname "$0")/.."
W="${1:-benchmarks/_work/f1251s}"
KIND="${2:-plain}"
SUFFIX=""; FLAGS="--study"
if [ "$KIND" = private ]; then SUFFIX="-private"; FLAGS="--study --private"; fi
SF=.venv/bin/securefed
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
# shellcheck disable=SC2086
[ -f "$W/study-protocol$SUFFIX/protocol.toml" ] || .venv/bin/python benchmarks/fets1251_protocol.py \
    "$W/ref-features" "$W/study-protocol$SUFFIX" $FLAGS
t0=$(date +%s)
rc=0
/usr/bin/time -v $SF run "$W/study-protocol$SUFFIX/protocol.toml" --data "$W/data" \
    --truth "$W/data/truth.csv" --out "$W/study$SUFFIX" --workers 2 --device cpu \
    2> "$W/study$SUFFIX.time" || rc=$?
grep -E "Elapsed|Maximum resident" "$W/study$SUFFIX.time" || true
echo "study: $(( $(date +%s) - t0 )) s (exit $rc)"
exit $rc
