#!/usr/bin/env bash
# docs/deployment.md followed command by command, as an IT officer would, on this machine
# (issue 31: "a walkthrough tested by following it on the pilot"): the study CA, the parties'
# keys, the deployment protocol from its skeleton, the board's signature, each site's SITE.toml
# (the strict policy `site init` writes, relaxed as far as the demo protocol needs, as a
# hospital's governance would), the SuperLink of section 3, one SuperNode per site through
# `securefed site supernode` (section 4), `securefed federation run` (section 5), then
# `securefed site status` and `securefed audit verify`. Every `securefed` line below is a line of
# docs/deployment.md or docs/governance.md with its placeholders filled
# (tests/cli/test_walkthrough_script.py keeps the two in step). Loopback, 3 sites of the demo
# federation, the demo protocol. Every process started is stopped at the end.
# Usage: benchmarks/deployment_walkthrough.sh [WORKDIR]   (default benchmarks/_work/walkthrough)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
W="${1:-benchmarks/_work/walkthrough}"
rm -rf "$W"; mkdir -p "$W"; cd "$W"
export PATH="$ROOT/.venv/bin:$PATH"
export FLWR_TELEMETRY_ENABLED=0
SITES=(site-1 site-2 site-3)
PORT=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PIDS=()
stop_all() {
    for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
}
trap stop_all EXIT
step() { echo; echo "== $(date -u +%H:%M:%S) $*"; }

step "0. the hospitals' data (synthetic: the demo federation)"
securefed synth --preset demo --out data

step "1. certificates (docs/deployment.md section 1)"
securefed keys tls --out tls --host 127.0.0.1 --host localhost

step "keys of the parties (docs/governance.md)"
securefed keys new --role governance --id board --out gov/
mkdir -p collected-keys public-keys server-keys site-node-keys
securefed keys new --role server --id server --out server-keys/
cp server-keys/server.pub.json collected-keys/
for s in "${SITES[@]}"; do
    securefed keys new --role site --id "$s" --out "$s/keys/"
    cp "$s/keys/$s.pub.json" collected-keys/
    cp "$s/keys/$s.pub.json" public-keys/
    securefed site node-key --out "$s/node"
    cp "$s/node/node.pub" "collected-keys/$s.node.pub"
    cp "$s/node/node.pub" "site-node-keys/$s.pub"
done
cp gov/board.pub.json collected-keys/

step "2. the deployment protocol from its skeleton (docs/deployment.md section 2)"
# the demo protocol claims no finite epsilon: no reply pacing (the docs' 600 s slot would make
# each of its rounds last 10 minutes)
securefed protocol new --deployment --sites site-1,site-2,site-3 --from demo \
  --keys collected-keys/ --reply-slot-s 0 --out study.toml
securefed protocol app-hash
securefed protocol check study.toml
securefed protocol sign study.toml --key gov/board.key
securefed protocol render study.toml --format html --out study.html

step "each site: SITE.toml, its policy relaxed for the demo protocol, the protocol accepted"
for s in "${SITES[@]}"; do
    securefed site init --site-id "$s" --trust gov/board.pub.json \
        --allow-recipient server-keys/server.pub.json --key "$s/keys/$s.key" --out "$s/site.toml"
    # a hospital's information governance decides this; the demo protocol releases plain
    # features and trains without DP, which the strictest policy refuses
    python - "$s/site.toml" <<'EOF'
import sys, tomllib, tomli_w
path = sys.argv[1]
doc = tomllib.load(open(path, "rb"))
doc["policy"].update(max_total_epsilon=float("inf"), allow_plain_stages=True,
                     forbidden_release_modes=[], require_dp_training=False,
                     min_sites_per_aggregate=2)
open(path, "wb").write(tomli_w.dumps(doc).encode())
EOF
    securefed site verify study.toml --site-config "$s/site.toml"
done
securefed site selftest --site-config site-1/site.toml

step "3. the coordinator's SuperLink (docs/deployment.md section 3)"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_HOME=$PWD/flwr-home
setsid flower-superlink \
  --ssl-ca-certfile tls/ca.pem --ssl-certfile tls/server.pem --ssl-keyfile tls/server.key \
  --enable-supernode-auth \
  --disable-runtime-dependency-installation \
  --host 127.0.0.1 --port "$PORT" > superlink.log 2>&1 &
PIDS+=($!)

step "5. the study, started first (docs/deployment.md section 5): it registers the node keys"
t0=$(date +%s)
securefed federation run study.toml --superlink "127.0.0.1:$PORT" \
  --ca-cert tls/ca.pem --node-keys site-node-keys/ --keys public-keys/ \
  --server-key server-keys/server.key --out study/ &
COORD=$!
PIDS+=("$COORD")  # stopped with the rest if the script fails before the study ends
for _ in $(seq 120); do
    [ "$(python -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' \
        study/coordinator/nodes.json 2>/dev/null || echo 0)" = 3 ] && break
    sleep 1
done

step "4. each hospital's SuperNode (docs/deployment.md section 4), once its key is registered"
i=0
for s in "${SITES[@]}"; do
    securefed site supernode study.toml --site-config "$s/site.toml" \
      --superlink "127.0.0.1:$PORT" --ca-cert tls/ca.pem --node-key "$s/node/node.key" \
      --data-dir data --work-dir "$s/work" --runtime-port $((PORT + 10 + i)) --check-only
    setsid securefed site supernode study.toml --site-config "$s/site.toml" \
      --superlink "127.0.0.1:$PORT" --ca-cert tls/ca.pem --node-key "$s/node/node.key" \
      --data-dir data --work-dir "$s/work" --runtime-port $((PORT + 10 + i)) \
      > "$s/supernode.out" 2>&1 &
    PIDS+=($!)
    i=$((i + 1))
done
wait "$COORD"
echo "federation run: $(( $(date +%s) - t0 )) s"

step "each site's status and every party's audit log"
for s in "${SITES[@]}"; do
    securefed site status study.toml --site-config "$s/site.toml" --work-dir "$s/work"
    securefed audit verify "$s/work" --key "$s/keys/$s.pub.json"
done
for s in "${SITES[@]}"; do grep -h "supernode:" "$s/supernode.out" | tail -2 || true; done
echo "walkthrough: done"
