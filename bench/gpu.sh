#!/usr/bin/env bash
# One prepared run of the CUDA checks on a GPU machine (see tests/gpu/test_cuda.py).
# Usage on the GPU machine, from the repository root:
#   bash bench/gpu.sh            # with wheels for missing packages in .whl/ (optional)
set -euo pipefail
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 LAYERSWARM_HOME=${LAYERSWARM_HOME:-/tmp/layerswarm}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
python3 -m pytest -q -s -p no:cacheprovider -o addopts="" tests/gpu/test_cuda.py "$@"
