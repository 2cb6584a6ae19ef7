"""``load_span`` for any architecture the models package maps: a decoder's span or an encoder's.

Decoders (causal LMs) load through :mod:`swarmnode.models.span`; encoder-only models (BERT-style:
bidirectional, no KV cache) through :mod:`swarmnode.models.encoder`. Callers import
``swarmnode.models.load_span`` and get whichever the checkpoint's config needs.
"""

from __future__ import annotations

import torch

from swarmnode.models import span
from swarmnode.models.checkpoint import Checkpoint
from swarmnode.models.encoder import is_encoder_only, load_encoder_span
from swarmnode.models.structure import UnsupportedArchitecture


def load_span(
    checkpoint: Checkpoint, start: int, end: int, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> span.SpanModel:
    """Load only blocks [start, end) of ``checkpoint`` (see :func:`swarmnode.models.span.load_span`); an
    encoder's span (:class:`~swarmnode.models.encoder.EncoderSpan`) for an encoder-only model.

    Raises:
        ValueError: the range is empty or outside the model, or weights are missing.
        UnsupportedArchitecture: the architecture could not be mapped, as a decoder or as an encoder.
    """
    try:
        span.family_of(checkpoint.config)
    except UnsupportedArchitecture:
        if not is_encoder_only(checkpoint.config):
            raise
        return load_encoder_span(checkpoint, start, end, dtype, device)  # BERT-style: bidirectional, no cache
    return span.load_span(checkpoint, start, end, dtype, device)
