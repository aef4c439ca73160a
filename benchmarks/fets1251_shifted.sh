#!/usr/bin/env bash
# fets-1251-shifted (issue 32): the federation, the shift check (does a model trained on the
# standard acquisitions lose on each shifted group?) and its clustering (plain and
# secure-aggregate at feature epsilon 1: ARI, cluster x scanner). Every step resumes.
# Usage: benchmarks/fets1251_shifted.sh [WORKDIR]   (~35 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
W="${1:-benchmarks/_work/f1251s}"
SF=.venv/bin/securefed
mkdir -p "$W"
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
t0=$(date +%s)
# 1. The federation (FeTS2022's 1251 cases and 23 institution sizes, 4 mm, shifted groups).
[ -f "$W/data/truth.csv" ] || $SF synth --out "$W/data" --preset fets-1251-shifted --workers 2
echo "federation: $(( $(date +%s) - t0 )) s"
# 2. The shift check: 160 standard train cases, 800 steps, every group's test cases.
[ -f "$W/shift.json" ] || .venv/bin/python benchmarks/shift_check.py --data "$W/data" \
    --protocol protocols/demo.toml --spacing 4 --train-cases 160 --steps 800 --out "$W/shift.json"
echo "shift check: $(( $(date +%s) - t0 )) s"
# 3. A reference federation (another generator and seed): pinned bounds and projection.
[ -f "$W/ref/truth.csv" ] || $SF synth --out "$W/ref" --preset demo --seed 99 --spacing 4 --workers 2
[ -f "$W/ref-features/features.csv" ] || $SF features extract --data "$W/ref" \
    --protocol protocols/demo.toml --out "$W/ref-features" --workers 2
.venv/bin/python benchmarks/fets1251_protocol.py "$W/ref-features" "$W/protocol"
# 4. Clustering: plain (the paper) and secure-aggregate at epsilon 1 (features shared).
cat > "$W/grid.toml" <<'GRID'
[grid]
release = ["plain", "secure-aggregate"]
feature_epsilon = [1.0]
training = ["none"]
aggregation = ["secagg+"]
attacks = false
stop_after = "clustering"
GRID
rc=0
/usr/bin/time -v $SF sweep "$W/protocol/protocol.toml" --data "$W/data" --truth "$W/data/truth.csv" \
    --out "$W/sweep" --grid "$W/grid.toml" --workers 2 2> "$W/sweep.time" || rc=$?
grep -E "Elapsed|Maximum resident" "$W/sweep.time" || true
echo "total: $(( $(date +%s) - t0 )) s (sweep exit $rc)"
exit $rc
