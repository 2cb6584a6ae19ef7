"""Layerswarm's node agent and client library.

Serve a span of a model's blocks with ``swarmnode serve``, or generate through a swarm::

    from swarmnode import AutoDistributedModelForCausalLM
    model = AutoDistributedModelForCausalLM.from_pretrained("smollm2", peers=[...])
    model.generate(input_ids, max_new_tokens=32)
"""

from swarmnode.version import __version__

__all__ = ["AutoDistributedModelForCausalLM", "DistributedModelForCausalLM", "__version__"]


def __getattr__(name: str):
    # Imported lazily so that `swarmnode.protocol` stays importable without torch.
    if name in ("AutoDistributedModelForCausalLM", "DistributedModelForCausalLM"):
        from swarmnode.client import model

        return getattr(model, name)
    raise AttributeError(name)
