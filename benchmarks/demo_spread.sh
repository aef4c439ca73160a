#!/usr/bin/env bash
# The demo's run-to-run spread (issue 31: is the pilot "the simulation's results within
# run-to-run noise"?). The simulation trains from the protocol's training seed, each pilot from
# the sites' own secret seeds; so the simulation runs at several training seeds (the same demo
# federation, the same split, baselines FedAvg and CFFL as in the pilot) and the pilot runs again.
# Usage: benchmarks/demo_spread.sh [OUTDIR] [SEEDS] [PILOTS]   (defaults: benchmarks/_work/spread, "1 2 3", 2)
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-benchmarks/_work/spread}")"
seeds="${2:-1 2 3}"
pilots="${3:-2}"
mkdir -p "$out"
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
for s in $seeds; do
  p="$out/demo-seed$s.toml"
  sed -e 's/^baselines = .*/baselines = ["fedavg", "cffl"]/' \
      -e '/^\[training\]/,/^\[/ s/^seed = 0$/seed = '"$s"'/' protocols/demo.toml > "$p"
  grep -q "^seed = $s\$" "$p" || { echo "could not set the training seed in $p" >&2; exit 2; }
  [ -f "$out/run-demo-seed$s/results.json" ] && continue
  start=$(date +%s)
  .venv/bin/securefed demo --out "$out" --protocol "$p" > "$out/seed$s.log" 2>&1
  echo "simulation, training seed $s: $(( $(date +%s) - start )) s"
done
for i in $(seq 1 "$pilots"); do
  [ -f "$out/pilot-$i/study/results.json" ] && continue
  rm -rf "$out/pilot-$i"
  start=$(date +%s)
  .venv/bin/securefed pilot --out "$out/pilot-$i" > "$out/pilot-$i.log" 2>&1
  echo "pilot $i: $(( $(date +%s) - start )) s"
done
.venv/bin/python benchmarks/demo_spread.py "$out"
