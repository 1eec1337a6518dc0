"""AnomalyMatcher and sparse voxel attention against a naive per-cell loop (tests/reference_matcher.py)."""
from __future__ import annotations

import pytest
import torch

from oddsparse.models.matcher import (AnomalyMatcher, ObjectTokens, build_object_tokens, find_correspondences,
                                      patch_cells)
from reference_matcher import correspondences_reference, matcher_reference

C, C_BETA, R = 16, 8, 8


def make_scenes(object_counts, *, occupancy=0.08, seed=0, dtype=torch.float64, small_object=True,
                empty_object=False):
    """Random volumes/occupancy/beta for scenes with the given object counts.

    Returns (volumes (O, C, R, R, R), occupancy (O, R, R, R), beta (O, C_BETA, R, R, R), scene_index (O,)).
    The first object of the first scene gets only 3 occupied cells (fewer than k); optionally the
    last object of the last scene gets none.
    """
    gen = torch.Generator().manual_seed(seed)
    total = sum(object_counts)
    volumes = torch.randn(total, C, R, R, R, generator=gen, dtype=dtype)
    beta = torch.randn(total, C_BETA, R, R, R, generator=gen, dtype=dtype)
    density = (torch.rand(total, R, R, R, generator=gen) < occupancy).to(dtype)
    if small_object:
        density[0] = 0
        density[0, 1, 2, 3] = density[0, 4, 4, 4] = density[0, 7, 0, 5] = 1
    if empty_object:
        density[-1] = 0
    counts = torch.tensor(object_counts, dtype=torch.long)
    scene_index = torch.repeat_interleave(torch.arange(len(object_counts)), counts)
    return volumes, density, beta, scene_index


def tokens_of(volumes, density, beta, scene_index):
    return build_object_tokens(volumes, density, scene_index, threshold=0.5, beta=beta)


def small_matcher(variant, **kwargs):
    torch.manual_seed(1)
    options = dict(in_channels=C, beta_channels=C_BETA, dim=16, heads=2, blocks=2, k=5, variant=variant,
                   head_channels=8)
    options.update(kwargs)
    return AnomalyMatcher(**options).double()


# ---------------------------------------------------------------------------------------------- tokens
def test_build_object_tokens_keeps_exactly_the_occupied_cells():
    volumes, density, beta, scene_index = make_scenes([3, 4])
    tokens = tokens_of(volumes, density, beta, scene_index)
    expected = []
    for n in range(volumes.shape[0]):
        for i in range(R):
            for j in range(R):
                for k in range(R):
                    if density[n, i, j, k] > 0.5:
                        expected.append((n, i, j, k))
    got = [(int(n), *c.tolist()) for n, c in zip(tokens.object_index, tokens.cells)]
    assert got == expected
    for t, (n, i, j, k) in enumerate(expected):
        assert torch.equal(tokens.feats[t], volumes[n, :, i, j, k])
        assert torch.equal(tokens.beta[t], beta[n, :, i, j, k])
    assert torch.equal(tokens.scene_index, scene_index)
    assert torch.equal(tokens.densify(tokens.feats), volumes * (density > 0.5)[:, None])


def test_patch_cells_against_a_loop_over_cells():
    """Space-to-depth: every fine cell lands in its patch's token, channel (ch, a, b, c) in row-major order."""
    torch.manual_seed(0)
    volumes = torch.randn(2, 3, 4, 6, 2)
    got = patch_cells(volumes, 2)
    assert got.shape == (2, 3 * 8, 2, 3, 1)
    for o in range(2):
        for i in range(2):
            for j in range(3):
                expected = [volumes[o, ch, 2 * i + a, 2 * j + b, c] for ch in range(3)
                            for a in range(2) for b in range(2) for c in range(2)]
                assert torch.equal(got[o, :, i, j, 0], torch.stack(expected))
    assert patch_cells(volumes, 1) is volumes
    with pytest.raises(ValueError, match="patch must be >= 1 and divide"):
        patch_cells(volumes, 4)
    with pytest.raises(ValueError, match=r"\(O, C, r, r, r\)"):
        patch_cells(volumes[0], 2)


def test_object_tokens_validation_names_the_field():
    volumes, density, beta, scene_index = make_scenes([3])
    tokens = tokens_of(volumes, density, beta, scene_index)
    with pytest.raises(ValueError, match="cells"):
        tokens.replace(cells=tokens.cells.int())
    with pytest.raises(ValueError, match="cells"):
        tokens.replace(cells=tokens.cells + R)
    with pytest.raises(ValueError, match="object_index"):
        tokens.replace(object_index=tokens.object_index + 3)
    with pytest.raises(ValueError, match="beta"):
        tokens.replace(beta=tokens.beta[1:])
    with pytest.raises(ValueError, match="cells"):  # a repeated (object, cell)
        tokens.replace(cells=torch.zeros_like(tokens.cells))
    with pytest.raises(ValueError, match="occupancy"):
        build_object_tokens(volumes, density[:, :4], scene_index)
    with pytest.raises(ValueError, match="beta"):
        small_matcher("full")(tokens.replace(beta=None))
    with pytest.raises(ValueError, match="variant"):
        AnomalyMatcher(C, variant="D")


# ---------------------------------------------------------------------------------------------- correspondences
@pytest.mark.parametrize("max_chunk_elements", [2 ** 24, 1])
def test_correspondences_match_reference(max_chunk_elements):
    tokens = tokens_of(*make_scenes([3, 4], empty_object=True))
    neighbours, valid = find_correspondences(tokens, k=5, max_chunk_elements=max_chunk_elements)
    expected = correspondences_reference(tokens, k=5)
    assert valid.shape == neighbours.shape
    assert (neighbours[~valid] == -1).all()
    for t in range(tokens.num_tokens):
        got = neighbours[t][valid[t]].tolist()
        assert len(got) == len(set(got))
        assert sorted(got) == sorted(expected[t]), t
    # the 3-cell object contributes its 3 cells (fewer than k) to the other objects of its scene
    small = set(torch.nonzero(tokens.object_index == 0).flatten().tolist())
    token_in_scene0 = torch.nonzero((tokens.object_index > 0) & (tokens.object_index < 3)).flatten()
    assert all(small <= set(neighbours[t].tolist()) for t in token_in_scene0.tolist())


# ---------------------------------------------------------------------------------------------- vs naive loop
@pytest.mark.parametrize("variant,contrast,messages", [("full", False, False), ("B", False, False),
                                                       ("A", False, False), ("full", True, False),
                                                       ("B", True, False), ("full", False, True),
                                                       ("B", False, True)])
def test_matcher_matches_reference_outputs_and_gradients(variant, contrast, messages):
    volumes, density, beta, scene_index = make_scenes([3, 4], occupancy=0.05)
    volumes.requires_grad_(True)
    # tiny chunks: several chunks in the correspondence search and the attention, with checkpointing
    matcher = small_matcher(variant, max_chunk_elements=3000, contrast=contrast, difference_messages=messages)
    weights = torch.linspace(-1.0, 2.0, volumes.shape[0], dtype=torch.float64)
    params = [p for p in matcher.parameters()]

    tokens = tokens_of(volumes, density, beta, scene_index)
    logits = matcher(tokens)
    grads = torch.autograd.grad((logits * weights).sum(), [volumes, *params])

    tokens_ref = tokens_of(volumes, density, beta, scene_index)
    logits_ref = matcher_reference(matcher, tokens_ref)
    grads_ref = torch.autograd.grad((logits_ref * weights).sum(), [volumes, *params])

    assert logits.shape == (7,)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-10, atol=1e-10)
    names = ["volumes"] + [name for name, _ in matcher.named_parameters()]
    for name, grad, grad_ref in zip(names, grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-10, msg=name)
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("messages", [False, True])
def test_edge_cases_match_reference(messages):
    """A one-object scene (no neighbour: zero message, with difference messages too) and an object with no
    occupied cell."""
    volumes, density, beta, scene_index = make_scenes([1, 3], empty_object=True, seed=3)
    matcher = small_matcher("full", difference_messages=messages)
    tokens = tokens_of(volumes, density, beta, scene_index)
    logits = matcher(tokens)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, matcher_reference(matcher, tokens), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", ["full", "B", "A"])
@pytest.mark.parametrize("counts", [[], [2, 3]])
def test_no_token_at_all(variant, counts):
    """No cell passes the threshold (e.g. an untrained density), or there is no object: one logit per object."""
    volumes, density, beta, scene_index = make_scenes(counts, small_object=False)
    density.zero_()
    volumes.requires_grad_(True)
    matcher = small_matcher(variant)
    tokens = tokens_of(volumes, density, beta, scene_index)
    assert tokens.num_tokens == 0 and tokens.num_objects == sum(counts)
    if variant == "full":
        neighbours, valid = find_correspondences(tokens, k=5)
        assert neighbours.shape == valid.shape and neighbours.shape[0] == 0
    logits = matcher(tokens)
    assert logits.shape == (sum(counts),) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, matcher_reference(matcher, tokens), rtol=1e-10, atol=1e-10)
    if counts:  # every empty object gets the head's logit of an all-zero volume; gradients exist
        assert torch.allclose(logits, logits[:1].expand_as(logits))
        logits.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in matcher.parameters() if p.grad is not None)
        assert matcher.head.mlp[-1].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- invariances
@pytest.mark.parametrize("variant,messages", [("full", False), ("B", False), ("full", True)])
def test_permuting_objects_permutes_logits(variant, messages):
    volumes, density, beta, scene_index = make_scenes([3, 4], seed=5)
    matcher = small_matcher(variant, difference_messages=messages)
    logits = matcher(tokens_of(volumes, density, beta, scene_index))
    perm = torch.tensor([2, 0, 1, 6, 4, 3, 5])  # within scenes
    logits_perm = matcher(tokens_of(volumes[perm], density[perm], beta[perm], scene_index[perm]))
    torch.testing.assert_close(logits_perm, logits[perm], rtol=1e-10, atol=1e-10)
    # interleaving the scenes' objects in the packed order changes nothing either
    mix = torch.tensor([3, 0, 4, 1, 5, 2, 6])
    logits_mix = matcher(tokens_of(volumes[mix], density[mix], beta[mix], scene_index[mix]))
    torch.testing.assert_close(logits_mix, logits[mix], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant,messages", [("full", False), ("B", False), ("A", False), ("full", True)])
def test_packing_other_scenes_does_not_change_logits(variant, messages):
    """Scenes with 2..12 objects batched together give each scene's own logits."""
    counts = list(range(2, 13))
    volumes, density, beta, scene_index = make_scenes(counts, occupancy=0.05, seed=7)
    density[5] = 1.0  # one object of 512 cells: the padding of every other scene changes
    matcher = small_matcher(variant, k=20, difference_messages=messages)
    batched = matcher(tokens_of(volumes, density, beta, scene_index))
    assert batched.shape == (sum(counts),) and torch.isfinite(batched).all()
    start = 0
    for count in counts:
        part = slice(start, start + count)
        alone = matcher(tokens_of(volumes[part], density[part], beta[part], torch.zeros(count, dtype=torch.long)))
        torch.testing.assert_close(batched[part], alone, rtol=1e-9, atol=1e-10)
        start += count


def test_sparse_attention_compares_objects():
    """Changing one object changes the other objects' logits in scene, not those of other scenes."""
    volumes, density, beta, scene_index = make_scenes([3, 4], seed=9)
    matcher = small_matcher("full")
    before = matcher(tokens_of(volumes, density, beta, scene_index))
    volumes = volumes.clone()
    volumes[1] += 1.0
    after = matcher(tokens_of(volumes, density, beta, scene_index))
    assert (before[[0, 2]] - after[[0, 2]]).abs().min() > 1e-8
    torch.testing.assert_close(before[3:], after[3:], rtol=0, atol=0)
    solo = small_matcher("A")
    before, after = solo(tokens_of(volumes, density, beta, scene_index)), None
    volumes[1] -= 1.0
    after = solo(tokens_of(volumes, density, beta, scene_index))
    torch.testing.assert_close(before[[0, 2]], after[[0, 2]], rtol=0, atol=0)


def test_variant_switch():
    flags = {v: (AnomalyMatcher(C, variant=v).uses_distillation, AnomalyMatcher(C, variant=v).uses_correspondences)
             for v in ("A", "B", "C", "full")}
    assert flags == {"A": (False, False), "B": (False, False), "C": (True, False), "full": (True, True)}
    a, b = AnomalyMatcher(C, variant="A"), AnomalyMatcher(C, variant="B")
    assert sum(p.numel() for p in a.parameters()) < sum(p.numel() for p in b.parameters())
    assert {n for n, _ in AnomalyMatcher(C, variant="C").named_parameters()} == \
        {n for n, _ in AnomalyMatcher(C, variant="full").named_parameters()}


def test_default_size_float32_runs_and_trains():
    """Paper sizes (dim 128, 8 heads, 3 blocks, k 20) in float32: finite logits and gradients."""
    volumes, density, beta, scene_index = make_scenes([3, 6], occupancy=0.3, dtype=torch.float32)
    beta128 = torch.randn(volumes.shape[0], 128, R, R, R)
    matcher = AnomalyMatcher(C, variant="full")
    tokens = build_object_tokens(volumes, density, scene_index, threshold=0.5, beta=beta128)
    logits = matcher(tokens)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits)).backward()
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(p.grad).all() for p in matcher.parameters() if p.grad is not None)
    assert matcher.blocks[0].qkv.weight.grad.abs().sum() > 0


def test_scene_median_of_others_against_a_naive_loop():
    from reference_matcher import median_reference

    from oddsparse.models.matcher import scene_median_of_others

    torch.manual_seed(6)
    x = torch.randn(9, 5, dtype=torch.float64)
    scene_index = torch.tensor([2, 0, 0, 2, 1, 0, 2, 2, 0])  # unsorted; scene 1 holds a single object
    got = scene_median_of_others(x, scene_index)
    for n in range(9):
        others = [x[m] for m in range(9) if m != n and scene_index[m] == scene_index[n]]
        expected = median_reference(others) if others else x[n]
        assert torch.equal(got[n], expected), n
    # by hand: scene 0 = objects 1, 2, 5, 8; for object 1 the others are 2, 5, 8 (odd count: the middle)
    column = sorted([float(x[m, 0]) for m in (2, 5, 8)])
    assert float(got[1, 0]) == column[1]
    assert scene_median_of_others(x[:0], scene_index[:0]).shape == (0, 5)


def test_contrast_is_refused_for_variant_a_and_compares_objects():
    with pytest.raises(ValueError, match="contrast"):
        small_matcher("A", contrast=True)
    # the head alone: with contrast another object of the scene changes an object's logit, without it not
    from oddsparse.models.matcher import VolumeHead

    torch.manual_seed(2)
    volumes = torch.randn(4, 3, 8, 8, 8, dtype=torch.float64)
    changed = volumes.clone()
    changed[3] += 1.0
    scene_index = torch.zeros(4, dtype=torch.int64)
    for contrast in (False, True):
        head = VolumeHead(3, 8, 8, contrast=contrast).double()
        same = torch.allclose(head(volumes, scene_index)[:3], head(changed, scene_index)[:3])
        assert same != contrast
    with pytest.raises(ValueError, match="scene_index"):
        VolumeHead(3, 8, 8, contrast=True).double()(volumes)


def test_difference_messages_are_refused_for_variant_a():
    with pytest.raises(ValueError, match="difference_messages"):
        small_matcher("A", difference_messages=True)
