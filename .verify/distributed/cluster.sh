#!/usr/bin/env bash
# Starts a local Veetance cluster in the foreground: nats-server with JetStream, one front door
# (`veetance serve --queue`) and N workers (`veetance worker`), all on loopback, each with its
# log under $ROOT. Ctrl-C stops them all (workers hand their jobs back first).
#
#   .verify/distributed/cluster.sh [N_WORKERS=2] [MODELS_DIR=models] [ROOT=/tmp/veetance-cluster]
#
# Env: VEETANCE (the binary; default target/release/veetance, else target/debug/veetance),
# NATS_PORT (4222), HTTP_PORT (8188), DEVICES (comma list, one per worker, e.g. cuda:0,cuda:1:
# sets CUDA_VISIBLE_DEVICES for each worker in turn). See docs/distributed.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
workers=${1:-2}
models=$(realpath "${2:-models}")
root=${3:-/tmp/veetance-cluster}
nats_port=${NATS_PORT:-4222}
http_port=${HTTP_PORT:-8188}
bin=${VEETANCE:-}
if [ -z "$bin" ]; then
  if [ -x target/release/veetance ]; then bin=target/release/veetance; else bin=target/debug/veetance; fi
fi
bin=$(realpath "$bin")
command -v nats-server >/dev/null || { echo "nats-server is not installed (apt install nats-server)" >&2; exit 1; }
IFS=, read -r -a devices <<< "${DEVICES:-}"
mkdir -p "$root"
pids=()
stop() {
  echo "stopping the cluster"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait
}
trap stop INT TERM

nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$root/jetstream" >"$root/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/"$nats_port") 2>/dev/null && break; sleep 0.1; done
queue=nats://127.0.0.1:$nats_port

"$bin" serve --queue "$queue" --listen "127.0.0.1:$http_port" --models-dir "$models" \
  --out "$root/front/out" --input-dir "$root/shared/input" --temp-dir "$root/front/temp" \
  --state-dir "$root/front/state" >"$root/front.log" 2>&1 &
pids+=($!)
for i in $(seq 1 "$workers"); do
  dev=${devices[$((i - 1))]:-}
  (
    if [ -n "$dev" ]; then export CUDA_VISIBLE_DEVICES=${dev#cuda:}; fi
    exec "$bin" worker --queue "$queue" --name "w$i" --models-dir "$models" \
      --out "$root/w$i/out" --input-dir "$root/shared/input" --temp-dir "$root/w$i/temp" \
      --state-dir "$root/w$i/state"
  ) >"$root/w$i.log" 2>&1 &
  pids+=($!)
done
echo "cluster up: http://127.0.0.1:$http_port (queue $queue, $workers workers); logs in $root"
wait
