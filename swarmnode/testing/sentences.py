"""Sentences the embedding tests send through a swarm and local ``transformers`` alike (mixed lengths, one
non-ASCII, one of a single word: the padded rows of a batch differ)."""

SENTENCES = [
    "The capital of France is Paris.",
    "A lighthouse keeper trimmed the wicks and polished the brass every night.",
    "Embeddings map sentences to vectors.",
    "ok",
    "Volunteers run the blocks of large language models on their own machines, BitTorrent-style.",
    "The cat sat on the mat.",
    "¿Dónde está la biblioteca?",
    "Distributed inference splits a transformer into spans of layers served by different nodes.",
]
