#!/usr/bin/env bash
# Install the Layerswarm node agent for the current user and start serving.
#   curl -fsSL https://swarm.example.org/static/install-node.sh | bash -s -- PORTAL_URL NODE_TOKEN [BLOCKS]
# or, from a checkout: deploy/install-node.sh http://127.0.0.1:8000 lsn_... 0:10
set -euo pipefail
portal="${1:?usage: install-node.sh PORTAL_URL NODE_TOKEN [BLOCKS]}"
token="${2:?usage: install-node.sh PORTAL_URL NODE_TOKEN [BLOCKS]}"
blocks="${3:-0:10}"
source="${SWARMNODE_PIP_SOURCE:-git+https://github.com/layerswarm/layerswarm.git}"
venv="${SWARMNODE_VENV:-$HOME/.local/share/layerswarm/venv}"

python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "swarmnode @ $source"
"$venv/bin/swarmnode" models fetch smollm2
echo "starting the node; Ctrl-C stops it (and tells the portal it left)"
LAYERSWARM_NODE_TOKEN="$token" exec "$venv/bin/swarmnode" serve --model smollm2 --blocks "$blocks" --portal "$portal"
