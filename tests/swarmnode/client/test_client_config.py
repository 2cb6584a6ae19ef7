"""One ClientConfig for the model, ``from_pretrained`` and sessions; options by keyword still work."""

import pytest
import torch

from swarmnode.client import AuditPolicy, AutoDistributedModelForCausalLM, InferenceSession
from swarmnode.client.config import ClientConfig


def test_it_refuses_an_option_it_does_not_know():
    with pytest.raises(TypeError, match="pussh"):
        ClientConfig.build(pussh=True)
    with pytest.raises(TypeError, match="pussh"):  # before loading anything or asking any node
        AutoDistributedModelForCausalLM.from_pretrained("no-such-model", peers=["ws://127.0.0.1:9/x"], pussh=True)
    with pytest.raises(TypeError, match="pussh"):
        InferenceSession([], 8, pussh=True)


def test_options_replace_the_fields_of_a_shared_config():
    shared = ClientConfig(timeout=5.0, push=True)
    audited = ClientConfig.build(shared, audit=AuditPolicy(rate=0.5))
    assert (audited.timeout, audited.push, audited.audit.rate) == (5.0, True, 0.5)
    assert shared.audit is None  # the shared config is left as it was
    assert ClientConfig(dtype=torch.bfloat16).wire_dtype == "bfloat16"


def test_it_refuses_an_unknown_head_backend():
    with pytest.raises(ValueError, match="head_backend"):
        ClientConfig(head_backend="tpu")
