#!/usr/bin/env bash
# The first look at Ferry: a two-client dev cluster with the ferry driver,
# Consul and a registry, and a demo job running in a ferry container.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/cluster.sh up --clients "${FERRY_CLIENTS:-2}"
eval "$(bash scripts/cluster.sh env)"

echo "==> building the demo image and pushing it to $FERRY_REGISTRY_PUSH"
bash scripts/image.sh "$FERRY_REGISTRY_PUSH/ferry/busybox:demo"

echo "==> nomad job run jobspecs/demo.nomad.hcl"
nomad job run -var "registry=$FERRY_REGISTRY" jobspecs/demo.nomad.hcl

alloc=""
for _ in $(seq 60); do
  alloc=$(nomad job allocs -json demo | jq -r '[.[] | select(.ClientStatus == "running")][0].ID // empty')
  [[ -n $alloc ]] && break
  sleep 1
done
if [[ -z $alloc ]]; then
  nomad job status demo >&2
  echo "demo job did not reach running" >&2
  exit 1
fi
sleep 3
echo "==> nomad alloc logs $alloc"
nomad alloc logs "$alloc" | tail -5
cat <<EOM

The demo job runs in a ferry container. Try:
  eval "\$(scripts/cluster.sh env)"
  nomad alloc exec -i -t $alloc /bin/sh
  nomad alloc signal -s SIGUSR1 $alloc && nomad alloc logs $alloc | tail -2
  bin/ferry-companion migrate $alloc     # live: the count goes on on the other node
  bin/ferry-companion status             # the planner, each node's measured load, the moves
  bin/ferry-companion plan               # what the rebalancer would do now, and why
  nomad job stop demo
  scripts/cluster.sh down
EOM
