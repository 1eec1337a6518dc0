"""OddOneOutDetector(test_flips=N): test-time averaging over per-object half-turns of the object volumes,
against a naive per-object loop (half-turns by ``rot90``), and off while the matcher trains."""
from __future__ import annotations

import pytest
import torch

from reference_eval import random_object_volumes as _volumes
from reference_eval import small_detector as _detector


@pytest.mark.parametrize("variant", ["B", "full"])
def test_test_flips_average_the_readings_of_a_naive_loop(variant):
    plain = _detector(variant=variant, matcher_distance_input=True)
    averaged = _detector(variant=variant, matcher_distance_input=True, test_flips=3)
    volumes, scene = _volumes(plain, 7, 5), torch.tensor([0, 0, 0, 0, 1, 1, 1])
    # the three patterns the detector uses, drawn here as documented: a generator seeded 0, p = 1/2 each
    patterns = torch.rand(3, 7, generator=torch.Generator().manual_seed(0)) < 0.5
    assert torch.equal(averaged.flip_patterns(7, 3), patterns) and patterns.any() and not patterns.all()
    with torch.no_grad():
        readings = [plain.score_volumes(volumes, scene)[0]]
        for turn in patterns:
            turned = torch.stack([torch.rot90(v, 2, dims=(1, 2)) if t else v for v, t in zip(volumes, turn)])
            readings.append(plain.score_volumes(turned, scene)[0])
        got, tokens = averaged.score_volumes(volumes, scene)
    assert torch.allclose(got, torch.stack(readings).mean(0), atol=1e-10)
    assert torch.equal(tokens, plain.score_volumes(volumes, scene)[1])
    assert not torch.allclose(got, readings[0])  # the readings differ: the average is not the plain score
    # the same call gives the same logits (fixed patterns), and the scenes stay independent
    with torch.no_grad():
        again, _ = averaged.score_volumes(volumes, scene)
    assert torch.equal(got, again)


def test_test_flips_are_off_while_the_matcher_trains_and_refuse_negative_counts():
    plain = _detector(variant="full")
    averaged = _detector(variant="full", test_flips=2)
    volumes, scene = _volumes(plain, 4, 6), torch.zeros(4, dtype=torch.int64)
    plain.matcher.train(), averaged.matcher.train()
    torch.manual_seed(1)
    a = plain.score_volumes(volumes, scene)[0]
    torch.manual_seed(1)
    b = averaged.score_volumes(volumes, scene)[0]
    assert torch.allclose(a, b, atol=1e-12)
    with pytest.raises(ValueError, match="test_flips must be >= 0"):
        _detector(test_flips=-1)
