#!/usr/bin/env bash
# The egress census (`securefed audit egress --differential`) on a real run of every shipped
# protocol on the demo federation. fets2022-cffl.toml (the paper's recipe: 300 rounds of 128^3
# crops) cannot train on a 2-core CPU, so its run stops after clustering: its training replies
# are those of demo.toml (same release mode, aggregation and DP settings), censused in full there.
# Usage: benchmarks/census_protocols.sh [WORKDIR]   (default benchmarks/_work/census; ~30 min)
set -uo pipefail
cd "$(dirname "$0")/.."
W="${1:-benchmarks/_work/census}"
SF=.venv/bin/securefed
mkdir -p "$W"
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
census() {  # RUNDIR NAME
    local t0=$(date +%s)
    $SF audit egress "$1" --differential > "$W/$2.census.txt" 2>&1
    local rc=$?
    python3 - "$1/audit/egress.json" "$2" "$rc" "$(( $(date +%s) - t0 ))" <<'PY'
import collections, json, sys
doc = json.load(open(sys.argv[1]))
prot = collections.Counter(r["protection"] for r in doc["fields"])
diff = doc.get("differential") or {}
det = sorted({f for s in (diff.get("sites") or {}).values() for f in s["deterministic_in_data"]})
print(f"| {sys.argv[2]} | {sys.argv[3]} | {len(doc['fields'])} | "
      + ", ".join(f"{k} {v}" for k, v in sorted(prot.items()))
      + f" | {len(doc['findings'])} | {', '.join(det) or '-'} | {sys.argv[4]} s |")
PY
}
echo "| protocol | exit | (site, stage, field) rows | by protection | findings | deterministic in the data | census time |"
echo "|---|---:|---:|---|---:|---|---:|"
$SF demo --out "$W" > "$W/demo.log" 2>&1 && census "$W/run" demo
for p in demo-local-dp demo-secure-aggregate demo-dpsgd demo-clientdp demo-bfv demo-all-methods; do
    t0=$(date +%s)
    if $SF demo --out "$W" --protocol "$p" > "$W/$p.log" 2>&1; then
        echo "<!-- $p: study $(( $(date +%s) - t0 )) s -->"
        census "$W/run-$p" "$p"
    else
        echo "| $p | study failed (see $W/$p.log) | | | | | |"
    fi
done
$SF run protocols/fets2022-cffl.toml --data "$W/data" --out "$W/run-fets2022-cffl" \
    --stop-after clustering > "$W/fets2022-cffl.log" 2>&1 && census "$W/run-fets2022-cffl" "fets2022-cffl (to clustering)"
