"""Weights as content-addressed objects (issue #19): per-block files named by SHA-256, signed model
manifests, a size-capped LRU store. See :mod:`swarmnode.store.objects`, :mod:`swarmnode.store.manifest`
and :mod:`swarmnode.store.publish`.
"""

from swarmnode.store.manifest import (
    Manifest,
    ManifestError,
    ObjectRef,
    SignedManifest,
    TrustedPublishers,
    UntrustedManifest,
    span_digest,
)
from swarmnode.store.objects import ObjectMissing, ObjectStore, StoreFull
from swarmnode.store.publish import PublishResult, load_manifest, materialize, publish

__all__ = [
    "Manifest",
    "ManifestError",
    "ObjectMissing",
    "ObjectRef",
    "ObjectStore",
    "PublishResult",
    "SignedManifest",
    "StoreFull",
    "TrustedPublishers",
    "UntrustedManifest",
    "load_manifest",
    "materialize",
    "publish",
    "span_digest",
]
