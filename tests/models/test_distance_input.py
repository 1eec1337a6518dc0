"""OddOneOutDetector(matcher_distance_input=True): the distance inputs against a hand computation, and the
matcher's logits equivariant to object order and independent of the other scenes packed in the batch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from oddsparse.eval.baselines import distance_to_others
from oddsparse.models.detector import standardize_per_scene
from oddsparse.models.matcher import VolumeHead
from reference_eval import random_object_volumes as _volumes
from reference_eval import small_detector as _detector


def _check_invariances(detector):
    """Scores one scene of 4 random objects alone, packed after a scene of 3, and permuted: the packed and the
    permuted logits must be the scene's own ones. Returns the scene's volumes and logits."""
    a, b = _volumes(detector, 4, 3), _volumes(detector, 3, 4)
    with torch.no_grad():
        alone, _ = detector.score_volumes(a, torch.zeros(4, dtype=torch.int64))
        packed, _ = detector.score_volumes(torch.cat([b, a]), torch.tensor([0, 0, 0, 1, 1, 1, 1]))
        order = torch.tensor([2, 0, 3, 1])
        permuted, _ = detector.score_volumes(a[order], torch.zeros(4, dtype=torch.int64))
    assert torch.allclose(packed[3:], alone, atol=1e-9)
    assert torch.allclose(permuted, alone[order], atol=1e-9)
    return a, alone


def test_standardize_per_scene_matches_numpy():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 3, generator=g, dtype=torch.float64)
    scene = torch.tensor([1, 0, 1, 1, 2, 0, 1, 0, 3])
    got = standardize_per_scene(x, scene).numpy()
    for s in range(4):
        rows = (scene == s).numpy()
        part = x.numpy()[rows]
        expected = (part - part.mean(0)) / (part.std(0) + 1e-6)
        np.testing.assert_allclose(got[rows], expected, atol=1e-9)
    assert np.all(got[(scene == 3).numpy()] == 0)  # one object: no comparison, zeros


def test_distance_inputs_by_hand():
    detector = _detector(matcher_distance_input=True)
    volumes, scene = _volumes(detector, 7, 2), torch.tensor([0, 0, 0, 1, 1, 1, 1])
    c_v = detector.scene_model.volume_channels
    columns = [volumes[:, -1:], volumes[:, :c_v], volumes[:, c_v:-1]]  # opacity, F_v, beta
    for column, group in zip(detector.distance_inputs(volumes, scene).T, columns):
        raw = torch.log1p(distance_to_others(group, scene))
        for s in (0, 1):
            rows = scene == s
            part = raw[rows]
            expected = (part - part.mean()) / (part.std(unbiased=False) + 1e-6)
            assert torch.allclose(column[rows], expected, atol=1e-9)


def test_distance_input_logits_permute_and_ignore_other_scenes():
    detector = _detector(matcher_distance_input=True)
    a, alone = _check_invariances(detector)
    # the inputs reach the logits through the MLP's last 3 input columns, and only through them
    mlp = detector.matcher.head.mlp[0]
    with torch.no_grad():
        mlp.weight[:, -3:].zero_()
        cut, _ = detector.score_volumes(a, torch.zeros(4, dtype=torch.int64))
        a_other = a.clone()
        a_other[0, -1] = 1.0 - a_other[0, -1]  # object 0's opacity changes: every distance input changes
        _, _ = detector.score_volumes(a_other, torch.zeros(4, dtype=torch.int64))
    assert not torch.allclose(cut, alone)
    before = detector.distance_inputs(a, torch.zeros(4, dtype=torch.int64))
    after = detector.distance_inputs(a_other, torch.zeros(4, dtype=torch.int64))
    assert not torch.allclose(before[:, 0], after[:, 0])


def test_distance_input_is_refused_for_variant_a_and_checks_its_shape():
    with pytest.raises(ValueError, match="variant 'A'"):
        _detector(variant="A", matcher_distance_input=True)
    head = VolumeHead(3, 8, 8, extra_features=2).double()
    volumes = torch.randn(4, 3, 8, 8, 8, dtype=torch.float64)
    assert head(volumes, None, torch.zeros(4, 2, dtype=torch.float64)).shape == (4,)
    with pytest.raises(ValueError, match="extra of shape"):
        head(volumes)
    with pytest.raises(ValueError, match="extra of shape"):
        head(volumes, None, torch.zeros(4, 3, dtype=torch.float64))


def test_distance_anchor_starts_as_the_sum_of_the_distances_and_learns_a_correction():
    """``matcher_distance_anchor``: an untrained matcher scores each object by the sum of its standardised
    distances (tested by hand above), whatever its tokens hold; training moves the correction, which keeps the
    logits equivariant to object order and independent of the other scenes packed in the batch."""
    from oddsparse.train.engine import ObjectVolumeCache, train_matcher_on_cache

    detector = _detector(matcher_distance_input=True, matcher_distance_anchor=True)
    a, b = _volumes(detector, 4, 3), _volumes(detector, 3, 4)
    scene_a = torch.zeros(4, dtype=torch.int64)
    with torch.no_grad():
        start, _ = detector.score_volumes(a, scene_a)
        shuffled = a.clone()
        shuffled[:, :-1] = shuffled[:, :-1].flip(0)  # other features, same occupancies: the correction is still 0
        same, _ = detector.score_volumes(shuffled, scene_a)
    assert torch.allclose(start, detector.distance_inputs(a, scene_a).sum(1), atol=1e-12)
    assert torch.allclose(same, detector.distance_inputs(shuffled, scene_a).sum(1), atol=1e-12)

    cache = ObjectVolumeCache(torch.cat([a, b]).float(), torch.tensor([1, 0, 0, 0, 0, 1, 0]), torch.tensor([0] * 4 + [1] * 3))
    detector.float()
    train_matcher_on_cache(detector, cache, steps=3, batch_size=2, lr=1e-2, progress=False)
    detector.double().eval()
    assert not torch.equal(detector.matcher.anchor.weight, torch.ones(1, 3, dtype=torch.float64))
    assert detector.matcher.head.mlp[-1].weight.abs().sum() > 0  # the correction trained
    a, alone = _check_invariances(detector)
    with torch.no_grad():
        anchor = detector.matcher.anchor(detector.distance_inputs(a, scene_a)).squeeze(-1)
    assert not torch.allclose(alone, anchor)  # the head's correction is no longer zero


def test_distance_anchor_is_refused_without_the_distance_inputs():
    from oddsparse.models.matcher import AnomalyMatcher

    with pytest.raises(ValueError, match="matcher_distance_input=True"):
        _detector(matcher_distance_anchor=True)
    with pytest.raises(ValueError, match="extra_features >= 1"):
        AnomalyMatcher(in_channels=4, beta_channels=4, dim=8, heads=2, anchor=True)


def test_difference_inputs_by_hand_and_logits_permute_and_ignore_other_scenes():
    """``matcher_difference_input``: the head's per-cell inputs are difference_to_others of each channel group
    (tested against a naive loop in tests/eval), over its scene's mean, log1p; the logits keep the matcher's
    invariances, and the inputs reach them."""
    from oddsparse.eval.baselines import difference_to_others

    detector = _detector(matcher_distance_input=True, matcher_difference_input=True)
    volumes, scene = _volumes(detector, 7, 2), torch.tensor([0, 0, 0, 1, 1, 1, 1])
    c_v = detector.scene_model.volume_channels
    got = detector.difference_inputs(volumes, scene)
    assert got.shape == (7, 3) + (detector.roi_size,) * 3
    channels = volumes.shape[1]  # opacity, F_v, beta; each pair turned as its whole volumes agree best
    every = difference_to_others(volumes, scene, [slice(channels - 1, channels), slice(0, c_v), slice(c_v, channels - 1)])
    for g in range(3):
        raw = every[:, g]
        for s in (0, 1):
            rows = scene == s
            assert torch.allclose(got[rows, g], torch.log1p(raw[rows] / (raw[rows].mean() + 1e-6)), atol=1e-9)

    a, alone = _check_invariances(detector)
    with torch.no_grad():
        first = detector.matcher.head.cnn[0]
        first.weight[:, -3:].zero_()  # the head's first convolution no longer reads the differences
        cut, _ = detector.score_volumes(a, torch.zeros(4, dtype=torch.int64))
    assert not torch.allclose(cut, alone)


def test_difference_inputs_pool_over_token_patches_and_are_checked():
    from oddsparse.models.matcher import AnomalyMatcher, build_object_tokens

    plain = _detector(matcher_difference_input=True, roi_size=8)
    patched = _detector(matcher_difference_input=True, roi_size=8, token_patch=2)
    volumes, scene = _volumes(plain, 5, 6), torch.tensor([0, 0, 0, 1, 1])
    fine = torch.expm1(plain.difference_inputs(volumes, scene))  # d / scene mean, at 8^3
    coarse = torch.expm1(patched.difference_inputs(volumes, scene))  # patch means over their scene mean, at 4^3
    assert coarse.shape == (5, 3, 4, 4, 4)
    pooled = torch.nn.functional.avg_pool3d(fine, 2)  # the same scene mean divides both
    assert torch.allclose(coarse, pooled, rtol=1e-5)
    with pytest.raises(ValueError, match="variant 'A'"):
        _detector(variant="A", matcher_difference_input=True)
    matcher = AnomalyMatcher(in_channels=4, beta_channels=4, dim=8, heads=2, k=2, volume_inputs=3).double()
    tokens = build_object_tokens(torch.randn(3, 4, 8, 8, 8, dtype=torch.float64), torch.rand(3, 8, 8, 8),
                                 torch.zeros(3, dtype=torch.int64), threshold=0.5,
                                 beta=torch.randn(3, 4, 8, 8, 8, dtype=torch.float64))
    assert matcher(tokens, volume_extra=torch.zeros(3, 3, 8, 8, 8, dtype=torch.float64)).shape == (3,)
    with pytest.raises(ValueError, match="volume_extra of shape"):
        matcher(tokens)
