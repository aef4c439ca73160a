#!/usr/bin/env bash
# The 1251-case clustering sweep (issue targets: the smallest epsilon at which local-dp and
# secure-aggregate keep ARI >= 0.9 vs scanner, and the institution-inference advantage there).
# Every step resumes: a finished federation, feature folder or sweep point is kept.
# Usage: benchmarks/fets1251_sweep.sh [WORKDIR]   (default benchmarks/_work/f1251; ~45 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
W="${1:-benchmarks/_work/f1251}"
SF=.venv/bin/securefed
mkdir -p "$W"
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
t0=$(date +%s)
# 1. A reference federation (another generator, another seed): the pinned bounds and projection.
[ -f "$W/ref/truth.csv" ] || $SF synth --out "$W/ref" --preset demo --seed 99 --spacing 4 --workers 2
[ -f "$W/ref-features/features.csv" ] || $SF features extract --data "$W/ref" \
    --protocol protocols/demo.toml --out "$W/ref-features" --workers 2
.venv/bin/python benchmarks/fets1251_protocol.py "$W/ref-features" "$W/protocol"
echo "reference: $(( $(date +%s) - t0 )) s"
# 2. The study federation: FeTS2022's 1251 cases and 23 institution sizes, 4 mm.
[ -f "$W/data/truth.csv" ] || $SF synth --out "$W/data" --preset fets-1251 --workers 2
echo "federation: $(( $(date +%s) - t0 )) s"
# 3. The sweep: features and clustering per point, feature attacks on what the server holds.
cat > "$W/grid.toml" <<'GRID'
[grid]
release = ["plain", "secure-aggregate", "local-dp"]
feature_epsilon = [0.25, 0.5, 1.0, 2.0, 4.0, 16.0, 64.0]
training = ["none"]
aggregation = ["secagg+"]
attacks = true
stop_after = "clustering"
GRID
rc=0
/usr/bin/time -v $SF sweep "$W/protocol/protocol.toml" --data "$W/data" --truth "$W/data/truth.csv" \
    --out "$W/sweep" --grid "$W/grid.toml" --workers 2 2> "$W/sweep.time" || rc=$?
grep -E "Elapsed|Maximum resident" "$W/sweep.time" || true
echo "total: $(( $(date +%s) - t0 )) s (sweep exit $rc)"
exit $rc
