"""Token selection: the NumPy greedy pick agrees with ``torch.argmax`` everywhere it matters."""

import torch

from swarmnode.client.generation import greedy_pick


def test_greedy_pick_is_torch_argmax_with_ties_and_nans():
    scores = torch.randn(6, 49152, generator=torch.Generator().manual_seed(0))
    scores[1, 7] = scores[1, 9] = scores[1].max() + 1  # a tie: the first index wins
    scores[2, 100] = float("nan")  # NaN counts as the largest
    scores[3, :] = float("-inf")
    scores[4, 5] = float("inf")
    picked = greedy_pick(scores)
    assert picked.dtype == torch.int64
    assert torch.equal(picked, torch.argmax(scores, dim=-1))
    assert picked[1] == 7 and picked[2] == 100
    assert torch.equal(greedy_pick(scores.bfloat16()), torch.argmax(scores.bfloat16(), dim=-1))
