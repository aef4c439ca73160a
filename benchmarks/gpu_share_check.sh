#!/usr/bin/env bash
# GPU share of the simulated sites (issue 32, part 5): on a machine with a CUDA GPU and the CUDA
# build of torch, run the demo study with `--device cuda` and show that every simulated site
# trained on the GPU (Ray gives each an equal share: securefed.federation.simulation.
# client_resources) and how long the training stage took against `--device cpu`.
# Usage: benchmarks/gpu_share_check.sh [WORKDIR]   (a few minutes on one GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
W="${1:-benchmarks/_work/gpu-share}"
SF=.venv/bin/securefed
mkdir -p "$W"
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no GPU: nothing to check'; print(torch.cuda.get_device_name(0))"
[ -f "$W/data/truth.csv" ] || $SF synth --out "$W/data" --preset demo --workers 4
for dev in cuda cpu; do
  t0=$(date +%s)
  ( while sleep 5; do nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader; done ) > "$W/smi-$dev.log" 2>&1 &
  smi=$!
  $SF run protocols/demo.toml --data "$W/data" --out "$W/run-$dev" --truth "$W/data/truth.csv" --device "$dev"
  kill "$smi" || true
  echo "device $dev: $(( $(date +%s) - t0 )) s; GPU processes seen: $(sort -u "$W/smi-$dev.log" | wc -l)"
done
grep -h '"seconds"' "$W"/run-*/training/phases.json | head -4 || true
