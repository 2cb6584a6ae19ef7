"""Refusing nodes whose weights are not the trusted manifest's (issue #19, spec §4.10).

A node reports the digest of the blocks it loaded (``span_digest``: the SHA-256 of their object hashes,
each computed from the tensors it read). A client that trusts a model's manifest computes the digest the
node's span must have and leaves out every node that reports another one, or none. This catches nodes
started from altered, corrupted or other weights; a node that lies about what it loaded is the audits'
business (spec §11).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from swarmnode.discovery import PeerInfo
from swarmnode.models import layerswarm_home
from swarmnode.store import Manifest, ObjectStore, TrustedPublishers, load_manifest
from swarmnode.store.fetching import fetch_manifest, http_base

__all__ = ["keep_matching", "trusted_manifest", "weights_mismatch"]

log = logging.getLogger("swarmnode.client")


def weights_mismatch(peer: PeerInfo, manifest: Manifest) -> str | None:
    """Why ``peer`` does not serve ``manifest``'s blocks; None when its reported blocks match."""
    if not 0 <= peer.start_block < peer.end_block <= len(manifest.blocks):
        return f"serves blocks {peer.start_block}:{peer.end_block}, outside manifest {manifest.digest[:16]}'s model"
    if not peer.span_digest:
        return f"reports no block hashes: cannot check it serves manifest {manifest.digest[:16]} ({manifest.name})"
    if peer.span_digest != manifest.span_digest(peer.start_block, peer.end_block):
        return (
            f"serves blocks {peer.start_block}:{peer.end_block} whose hashes differ from the trusted manifest "
            f"{manifest.digest[:16]} ({manifest.name}): refused"
        )
    return None


def keep_matching(peers: list[PeerInfo], manifest: Manifest | None, errors: dict[str, str]) -> list[PeerInfo]:
    """The peers whose blocks match ``manifest`` (all of them when it is None); why each other was refused
    goes into ``errors`` (URL -> reason)."""
    if manifest is None:
        return peers
    kept = []
    for peer in peers:
        why = weights_mismatch(peer, manifest)
        if why is None:
            kept.append(peer)
        else:
            log.warning("node %s %s", peer.url[:200], why)
            errors[peer.url] = why
    return kept


def trusted_manifest(
    wanted: str, trust_keys: Iterable[str], peers: list[str], store_dir: str | Path | None = None
) -> Manifest:
    """The manifest ``wanted`` (a model identity or name) signed by a trusted publisher: from the store, else
    from the first of ``peers`` (node URLs) that has one. Trusted: ``trust_keys`` (keys or key files) and
    ``$LAYERSWARM_HOME/trusted_publishers``.

    Raises:
        ManifestError: a trust key that is no key; the store's manifest is not trusted.
        FetchError: no peer has a trusted manifest ``wanted``.
    """
    store = ObjectStore(store_dir or layerswarm_home() / "store")
    trusted = TrustedPublishers.from_file(layerswarm_home() / "trusted_publishers")
    trusted.add_from(trust_keys)
    try:
        return load_manifest(store, wanted, trusted)
    except KeyError:
        return fetch_manifest([b for b in (http_base(p) for p in peers) if b], wanted, trusted, store)
