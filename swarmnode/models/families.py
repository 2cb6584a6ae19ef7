"""The decoder families the test matrix proves, with the tiny configs it proves them on.

Support itself is not declared here: structure detection (:mod:`swarmnode.models.structure`) maps
any causal LM it can. This module lists the families ``tests/swarmnode/models/test_families.py``
runs, one row each (a tiny random-weight model: span-chain logits equal the whole model's, exact
greedy tokens through real node processes, ONNX Runtime parity or refusal), what each row expects
of the ONNX paths, and renders ``docs/architectures.md`` from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_ATTN = dict(
    hidden_size=64, num_hidden_layers=6, num_attention_heads=4, vocab_size=49152, bos_token_id=1, eos_token_id=2
)
_GQA = dict(_ATTN, num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512)


@dataclass(frozen=True)
class Family:
    """One row of the matrix.

    Attributes:
        name: what the table calls it.
        model_type: ``config.model_type``.
        config: the tiny config's arguments (6 blocks, hidden size 64).
        onnx: whether ONNX Runtime runs its spans (else the node refuses it and runs PyTorch).
        browser: whether browser nodes can run its spans (the portable ONNX export).
        notes: what the row exercises.
    """

    name: str
    model_type: str
    config: dict = field(default_factory=dict)
    onnx: bool = False
    browser: bool = False
    notes: str = ""


FAMILIES: tuple[Family, ...] = (
    Family("Llama", "llama", dict(_GQA, tie_word_embeddings=True), True, True, "the default model's architecture"),
    Family("Mistral", "mistral", dict(_GQA, sliding_window=4), notes="sliding window 4"),
    Family("Mixtral", "mixtral", dict(_GQA, num_local_experts=4, num_experts_per_tok=2), notes="sparse MoE, 4 experts"),
    Family("Qwen2", "qwen2", dict(_GQA, tie_word_embeddings=False), True, True, "q/k/v biases, untied head"),
    Family(
        "Qwen2-MoE",
        "qwen2_moe",
        dict(
            _GQA,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=64,
            shared_expert_intermediate_size=64,
            decoder_sparse_step=2,
        ),
        notes="MoE on every second block (layer-dependent structure), shared expert",
    ),
    Family("Qwen3", "qwen3", dict(_GQA, head_dim=16), notes="q/k norms"),
    Family("Gemma", "gemma", dict(_GQA, head_dim=16), True, True, "embedding scaling, (1 + w) RMSNorm"),
    Family(
        "Gemma2",
        "gemma2",
        dict(_GQA, head_dim=16, sliding_window=4, query_pre_attn_scalar=16, final_logit_softcapping=30.0),
        notes="sliding/full layers, attention and final logit soft-capping",
    ),
    Family(
        "Gemma3",
        "gemma3_text",
        dict(_GQA, head_dim=16, sliding_window=4),
        notes="5 sliding : 1 full, two rotary tables",
    ),
    Family("Phi-3", "phi3", dict(_GQA, pad_token_id=0), notes="fused qkv and gate/up projections"),
    Family("GPT-2", "gpt2", dict(_ATTN, max_position_embeddings=512), notes="learned absolute positions (client side)"),
    Family(
        "GPT-NeoX",
        "gpt_neox",
        dict(_ATTN, intermediate_size=128, max_position_embeddings=512),
        notes="partial rotary, parallel residual",
    ),
    Family("GPT-J", "gptj", dict(_ATTN, rotary_dim=8, n_positions=512), notes="interleaved partial rotary"),
    Family(
        "OPT",
        "opt",
        dict(_ATTN, ffn_dim=128, word_embed_proj_dim=32, max_position_embeddings=512, pad_token_id=0),
        notes="learned positions with offset, project_in/out (embedding width 32)",
    ),
    Family("Bloom", "bloom", dict(_ATTN), notes="ALiBi, embedding layer norm"),
    Family("Falcon", "falcon", dict(_ATTN), notes="multi-query, parallel attention"),
    Family("StableLM", "stablelm", dict(_GQA), notes="LayerNorm, partial rotary"),
    Family("Starcoder2", "starcoder2", dict(_GQA, sliding_window=4), notes="LayerNorm, biases, sliding window 4"),
    Family("OLMo2", "olmo2", dict(_GQA), notes="post-norms, q/k norms"),
    Family(
        "Granite",
        "granite",
        dict(_GQA, embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.3, logits_scaling=4.0),
        notes="embedding, residual and attention multipliers, logit scaling",
    ),
)


_ENC = dict(hidden_size=64, num_hidden_layers=6, num_attention_heads=4, intermediate_size=128, vocab_size=1000)

#: Encoder-only (BERT-style) families: bidirectional, no KV cache, served through the node's cache-less
#: forward (``swarmnode/models/encoder.py``); ``tests/swarmnode/models/test_encoder.py`` runs one row each.
ENCODER_FAMILIES: tuple[Family, ...] = (
    Family("BERT", "bert", dict(_ENC), notes="word + position + token-type embeddings, embedding LayerNorm"),
    Family("RoBERTa", "roberta", dict(_ENC, pad_token_id=1), notes="positions counted from the padding index"),
    Family(
        "DistilBERT",
        "distilbert",
        dict(vocab_size=1000, dim=64, n_layers=6, n_heads=4, hidden_dim=128),
        notes="blocks at transformer.layer, no token types",
    ),
    Family("ELECTRA", "electra", dict(_ENC, embedding_size=32), notes="embeddings narrower than the blocks (32)"),
)


def family(name_or_type: str) -> Family:
    """The row named ``name_or_type`` (its table name or model type)."""
    for f in FAMILIES:
        if name_or_type in (f.name, f.model_type):
            return f
    raise KeyError(name_or_type)


def tiny_config(fam: Family):
    """The family's tiny ``transformers`` config."""
    from transformers import AutoConfig

    return AutoConfig.for_model(fam.model_type, **fam.config)


def architectures_table() -> str:
    """``docs/architectures.md``: one row per family of the matrix."""
    yes = lambda v: "yes" if v else "no (PyTorch)"  # noqa: E731
    lines = [
        "# Supported architectures",
        "",
        "Generated from `swarmnode/models/families.py`",
        "(`python -m swarmnode.models.families > docs/architectures.md`);",
        "`tests/swarmnode/models/test_families.py` checks that this file matches the matrix and that every row holds:",
        "",
        "- **PyTorch**: span-chain logits equal the whole model's (tiny random-weight model, 6 blocks in 3 spans),",
        "  cached decoding equals it too, and greedy tokens through real node processes equal local `transformers`.",
        "- **ONNX**: the ONNX Runtime backend matches PyTorch within tolerance; where it cannot, the node refuses it",
        "  with the reason logged and runs the span on PyTorch (`no (PyTorch)`).",
        "- **Browser node**: the portable ONNX export browser nodes run matches PyTorch within tolerance.",
        "",
        "Structure (block list, input side, output side) is detected from the `transformers` model class, so",
        "other decoder families may well work; these are the ones tested.",
        "",
        "| family | model_type | PyTorch | ONNX | browser node | what the row exercises |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in FAMILIES:
        lines.append(f"| {f.name} | `{f.model_type}` | yes | {yes(f.onnx)} | {yes(f.browser)} | {f.notes} |")
    lines += [
        "",
        "## Encoder-only models",
        "",
        "BERT-style encoders are detected too (their blocks' attention is not causal): the client runs the input side",
        "and the pooling, nodes run the blocks through the cache-less `forward` (no KV cache, no sessions; padded rows",
        "masked by their lengths), and ONNX Runtime refuses them (PyTorch). Each row: a chain of 3 spans of a tiny",
        "random-weight model embeds a padded batch as the whole model does, and each row as it does alone.",
        "",
        "| family | model_type | what the row exercises |",
        "| --- | --- | --- |",
        *(f"| {f.name} | `{f.model_type}` | {f.notes} |" for f in ENCODER_FAMILIES),
    ]
    lines += ["", "## Real models", "", *REAL_MODELS]
    return "\n".join(lines) + "\n"


# Tested end to end with their real weights (tests marked `model`; `make model` fetches them).
REAL_MODELS = (
    "| model | `swarmnode models fetch` | architecture | use | through real nodes (fp32) | test |",
    "| --- | --- | --- | --- | --- | --- |",
    "| SmolLM2-135M-Instruct | `smollm2` | `llama`, 30 blocks, hidden 576 | chat | 0:10, 10:20, 20:30: PyTorch equals"
    " local `transformers`; ONNX Runtime within its documented tolerance"
    " | `test_smollm2_swarm.py`, `test_smollm2_onnx_swarm.py` |",
    "| Gemma 3 270M (base) | `gemma3-270m` | `gemma3_text`, 18 blocks, hidden 640, 5 sliding-window (512) : 1 full"
    " | completion (no chat template: `/v1/completions`) | 0:6, 6:12, 12:18: PyTorch equals local `transformers`,"
    " also on a 554-token prompt past the sliding window; ONNX Runtime refuses its blocks (logged)"
    " | `test_gemma3_swarm.py` |",
    "| all-MiniLM-L6-v2 | `minilm` | `bert` encoder, 6 blocks, hidden 384 | embeddings (`/v1/embeddings`)"
    " | 0:3, 3:6 (2 nodes): mean-pooled, normalised embeddings of 8 sentences equal local `transformers` within 1e-5,"
    " in padded batches too; ONNX Runtime refuses encoders (logged) | `test_minilm_swarm.py`,"
    " `tests/portal/api/test_openai_embeddings.py` |",
)


if __name__ == "__main__":
    print(architectures_table(), end="")
