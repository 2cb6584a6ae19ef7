"""Encoder-only (BERT-style) spans: detected from the config, bidirectional, cache-less, exact per sentence.

Tiny random-weight encoders of four families: the client's input side, a chain of three spans and the
pooling give what the whole local ``transformers`` model gives, for a padded batch and for each row alone.
"""

import pytest
import torch
from transformers import AutoModel, BertForMaskedLM

from swarmnode.models import Checkpoint, UnsupportedArchitecture, load_span
from swarmnode.models.encoder import EncoderSpan, encoder_structure, is_encoder_only, load_encoder_head
from swarmnode.models.families import ENCODER_FAMILIES, FAMILIES, tiny_config
from swarmnode.models.span import load_head_modules
from swarmnode.protocol import ProtocolError

VOCAB = 1000
ENCODERS = {f.model_type: f for f in ENCODER_FAMILIES}


def _save(model_type: str, out) -> None:
    torch.manual_seed(0)
    model = AutoModel.from_config(tiny_config(ENCODERS[model_type]))
    with torch.no_grad():  # larger weights than the init so that positions differ clearly
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(out)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    for model_type in ENCODERS:
        _save(model_type, root / model_type)
    return root


def _batch(lengths):
    """Token ids ``(B, T)`` right-padded with 0 and their mask; ids stay clear of the special/padding ones."""
    gen = torch.Generator().manual_seed(3)
    width = max(lengths)
    ids = torch.randint(5, VOCAB, (len(lengths), width), generator=gen)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


def _mean_pooled(hidden, mask):
    m = mask.unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=1)


@pytest.mark.parametrize("model_type", list(ENCODERS))
def test_a_chain_of_spans_embeds_a_padded_batch_as_the_whole_model_does(encoders, model_type):
    ck = Checkpoint(encoders / model_type)
    spans = [load_span(ck, a, b) for a, b in [(0, 2), (2, 5), (5, 6)]]
    assert all(isinstance(s, EncoderSpan) for s in spans)
    head = load_encoder_head(ck)
    ref = AutoModel.from_pretrained(encoders / model_type, dtype=torch.float32).eval()
    ids, mask = _batch([9, 4, 1, 7])
    with torch.inference_mode():
        expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        h = head.embed(ids, mask)
        for span in spans:
            h = span(h, attention_mask=mask)
        pooled = head.pool(h, mask)
        for row, n in enumerate(mask.sum(1).tolist()):  # padding changes no real token of any row
            torch.testing.assert_close(h[row, :n], expected[row, :n], rtol=0, atol=1e-5)
            alone = ref(input_ids=ids[row : row + 1, :n]).last_hidden_state
            assert (pooled[row] - _mean_pooled(alone, mask[row : row + 1, :n])[0]).abs().max() <= 1e-5
    assert torch.allclose(pooled.norm(dim=1), torch.ones(4))


def test_attention_is_bidirectional(encoders):
    """The first position's output depends on the last token (a causal mask would hide it)."""
    ck = Checkpoint(encoders / "bert")
    span = load_span(ck, 0, 6)
    head = load_encoder_head(ck)
    ids, mask = _batch([6])
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % VOCAB
    with torch.inference_mode():
        a = span(head.embed(ids, mask), attention_mask=mask)
        b = span(head.embed(changed, mask), attention_mask=mask)
    assert not torch.allclose(a[0, 0], b[0, 0])


def test_the_structure_is_detected_not_declared(encoders):
    s = encoder_structure(Checkpoint(encoders / "distilbert").config)
    assert (s.blocks_path, s.num_blocks, s.block_class, s.norm_attr) == ("transformer.layer", 6, "TransformerBlock", "")
    assert encoder_structure(Checkpoint(encoders / "bert").config).blocks_path == "encoder.layer"


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.name)
def test_no_decoder_family_is_taken_for_an_encoder(fam):
    assert not is_encoder_only(tiny_config(fam))


def test_a_span_holds_no_token_embeddings_and_only_its_blocks(encoders):
    span = load_span(Checkpoint(encoders / "bert"), 2, 4)
    assert span.inner.embeddings.word_embeddings is None
    assert len(span.layers) == 2


def test_an_encoder_node_opens_no_sessions(encoders):
    span = load_span(Checkpoint(encoders / "bert"), 0, 3)
    with pytest.raises(ProtocolError) as err:
        span.new_cache()
    assert err.value.code == "encoder_only"


def test_a_causal_lm_client_cannot_load_an_encoder(encoders):
    with pytest.raises(UnsupportedArchitecture, match="model type .bert."):
        load_head_modules(Checkpoint(encoders / "bert"))


def test_a_checkpoint_saved_with_a_head_loads_its_base_model(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(ENCODERS["bert"])
    BertForMaskedLM(config).save_pretrained(tmp_path)  # keys "bert.encoder.layer...", plus the MLM head
    ck = Checkpoint(tmp_path)
    assert any(k.startswith("bert.") for k in ck.keys())
    ref = AutoModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids, mask = _batch([5, 3])
    head, span = load_encoder_head(ck), load_span(ck, 0, 6)
    with torch.inference_mode():
        got = span(head.embed(ids, mask), attention_mask=mask)
        expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-5)


def test_a_range_outside_the_model_is_refused(encoders):
    with pytest.raises(ValueError, match="outside"):
        load_span(Checkpoint(encoders / "bert"), 4, 7)
