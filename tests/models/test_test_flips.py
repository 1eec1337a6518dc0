"""OddOneOutDetector(test_flips=N): test-time averaging over per-object half-turns of the object volumes,
against a naive per-object loop (half-turns by ``rot90``), and off while the matcher trains."""
from __future__ import annotations

import pytest
import torch

from reference_eval import random_object_volumes as _volumes
from reference_eval import small_detector as _detector


def _naive_turns(volumes, scene, count):
    """(count, O) turns as documented, by a loop: rank each scene's objects by their volume's sum (ties in the
    given order), object of rank r turned in reading c where a generator seeded 0, drawing ``count`` values per
    object, drew below 1/2."""
    draws = torch.rand(volumes.shape[0], count, generator=torch.Generator().manual_seed(0)) < 0.5
    turns = torch.zeros(count, volumes.shape[0], dtype=torch.bool)
    for s in set(scene.tolist()):
        members = [i for i in range(len(scene)) if scene[i] == s]
        ranked = sorted(members, key=lambda i: (float(volumes[i].sum()), i))
        for r, i in enumerate(ranked):
            turns[:, i] = draws[r]
    return turns


def _read(detector, volumes, scene):
    with torch.no_grad():
        return detector.score_volumes(volumes, scene)[0]


@pytest.mark.parametrize("variant", ["B", "full"])
def test_test_flips_average_the_readings_of_a_naive_loop(variant):
    plain = _detector(variant=variant, matcher_distance_input=True)
    averaged = _detector(variant=variant, matcher_distance_input=True, test_flips=3)
    volumes, scene = _volumes(plain, 7, 5), torch.tensor([0, 0, 0, 0, 1, 1, 1])
    patterns = _naive_turns(volumes, scene, 3)
    assert torch.equal(averaged.test_flip_turns(volumes, scene), patterns) and patterns.any() and not patterns.all()
    readings = [_read(plain, volumes, scene)]
    for turn in patterns:
        turned = torch.stack([torch.rot90(v, 2, dims=(1, 2)) if t else v for v, t in zip(volumes, turn)])
        readings.append(_read(plain, turned, scene))
    with torch.no_grad():
        got, tokens = averaged.score_volumes(volumes, scene)
    assert torch.allclose(got, torch.stack(readings).mean(0), atol=1e-10)
    assert torch.equal(tokens, plain.score_volumes(volumes, scene)[1])
    assert not torch.allclose(got, readings[0])  # the readings differ: the average is not the plain score
    assert torch.equal(got, _read(averaged, volumes, scene))  # the same call gives the same logits (fixed patterns)


def test_test_flips_read_each_scene_alone_whatever_is_packed_with_it_or_its_order():
    averaged = _detector(variant="full", matcher_distance_input=True, test_flips=3)
    a, b = _volumes(averaged, 4, 11), _volumes(averaged, 3, 12)
    alone = _read(averaged, a, torch.zeros(4, dtype=torch.int64))
    packed = _read(averaged, torch.cat([b, a]), torch.tensor([0, 0, 0, 1, 1, 1, 1]))
    assert torch.allclose(packed[3:], alone, atol=1e-10)
    permutation = torch.tensor([2, 0, 3, 1])
    permuted = _read(averaged, a[permutation], torch.zeros(4, dtype=torch.int64))
    assert torch.allclose(permuted, alone[permutation], atol=1e-10)
    # a column of the patterns does not depend on how many objects are drawn
    assert torch.equal(averaged.flip_patterns(9, 3)[:, :4], averaged.flip_patterns(4, 3))


def test_test_flips_turn_registered_scenes_whole():
    """Registered volumes share their scene's frame: identical copies read identically, as when the whole scene
    turns; turning them one by one would read copies in different frames."""
    averaged = _detector(variant="full", matcher_distance_input=True, test_flips=3, register_objects=True)
    copy = _volumes(averaged, 1, 13)
    volumes, scene = torch.cat([copy] * 5), torch.zeros(5, dtype=torch.int64)
    turns = averaged.test_flip_turns(volumes, scene)
    assert (turns == turns[:, :1]).all() and turns.any() and not turns.all()
    logits = _read(averaged, volumes, scene)
    assert torch.allclose(logits, logits[:1].expand(5), atol=1e-12)
    readings = [_plain_reading(averaged, volumes if not t else volumes.flip(2, 3), scene)
                for t in [False] + turns[:, 0].tolist()]
    assert torch.allclose(logits, torch.stack(readings).mean(0), atol=1e-10)


def _plain_reading(detector, volumes, scene):
    """One reading (``test_flips`` 0) of the same detector."""
    flips, detector.test_flips = detector.test_flips, 0
    try:
        return _read(detector, volumes, scene)
    finally:
        detector.test_flips = flips


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
