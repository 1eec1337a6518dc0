"""Box head: deltas and their inverse, alignment of the two size orders, a fresh head changes nothing."""
import math

import pytest
import torch

from oddsparse.geometry.boxes import YawBoxes, box_iou_3d
from oddsparse.models.box_head import (DELTA_CLAMP, BoxHead, align_boxes, apply_box_deltas, box_deltas,
                                      context_boxes)


def _boxes(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    center = torch.rand(n, 3, generator=g, dtype=torch.float64)
    size = 0.05 + 0.3 * torch.rand(n, 3, generator=g, dtype=torch.float64)
    yaw = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 2 * math.pi
    return YawBoxes(center, size, yaw)


def test_apply_inverts_deltas_and_gives_the_same_box():
    proposals, targets = _boxes(20, 0), _boxes(20, 1)
    # sizes within a factor 2 of each other in either order: inside the clamp, so the round trip is exact
    proposals = YawBoxes(proposals.center, 0.1 + proposals.size / 3, proposals.yaw)
    targets = YawBoxes(targets.center, 0.1 + targets.size / 3, targets.yaw)
    deltas = box_deltas(proposals, targets)
    assert deltas[:, 6].abs().max() <= math.pi / 4 + 1e-9
    rebuilt = apply_box_deltas(proposals, deltas)
    iou = box_iou_3d(rebuilt, targets).diagonal()
    assert torch.allclose(iou, torch.ones_like(iou), atol=1e-6)


def test_size_corrections_are_clamped_to_delta_clamp():
    """A log size ratio beyond DELTA_CLAMP changes a side by exp(DELTA_CLAMP) at most, either way; centre
    offsets and yaw are not clamped."""
    proposal = YawBoxes(torch.tensor([[0.0, 0.0, 0.1]]), torch.tensor([[0.4, 0.2, 0.2]]), torch.tensor([0.0]))
    deltas = torch.tensor([[3.0, 0.0, 0.0, 5.0, -5.0, 0.5, 2.0]])
    moved = apply_box_deltas(proposal, deltas)
    assert DELTA_CLAMP == 1.0
    assert torch.allclose(moved.size, torch.tensor([[0.4 * math.e, 0.2 / math.e, 0.2 * math.exp(0.5)]]))
    assert torch.allclose(moved.center, torch.tensor([[1.2, 0.0, 0.1]])) and moved.yaw.item() == 2.0
    assert torch.allclose(apply_box_deltas(proposal, deltas, clamp=2.0).size[0, :2],
                          torch.tensor([0.4 * math.exp(2.0), 0.2 * math.exp(-2.0)]))


def test_deltas_by_hand():
    proposal = YawBoxes(torch.tensor([[1.0, 2.0, 0.1]]), torch.tensor([[0.4, 0.2, 0.2]]), torch.tensor([math.pi / 2]))
    # target: moved +0.1 along world x (= -0.1 along the proposal's y axis), twice as tall, same yaw
    target = YawBoxes(torch.tensor([[1.1, 2.0, 0.2]]), torch.tensor([[0.4, 0.2, 0.4]]), torch.tensor([math.pi / 2]))
    deltas = box_deltas(proposal, target)[0]
    expected = torch.tensor([0.0, -0.1 / 0.2, 0.1 / 0.2, 0.0, 0.0, math.log(2.0), 0.0])
    assert torch.allclose(deltas, expected, atol=1e-6)


def test_align_picks_the_size_order_nearest_in_yaw():
    reference = YawBoxes(torch.zeros(1, 3), torch.tensor([[0.3, 0.2, 0.1]]), torch.tensor([0.1]))
    # the same box written rotated by a quarter turn with swapped sizes
    target = YawBoxes(torch.zeros(1, 3), torch.tensor([[0.2, 0.3, 0.1]]), torch.tensor([0.15 + math.pi / 2]))
    aligned = align_boxes(target, reference)
    assert torch.allclose(aligned.size, torch.tensor([[0.3, 0.2, 0.1]]))
    assert torch.allclose(aligned.yaw, torch.tensor([0.15]), atol=1e-6)
    assert float(box_iou_3d(aligned, target)[0, 0]) == pytest.approx(1.0, abs=1e-5)
    # a half turn is the same box: aligned back next to the reference
    turned = YawBoxes(reference.center, reference.size, reference.yaw + math.pi)
    assert torch.allclose(align_boxes(turned, reference).yaw, reference.yaw, atol=1e-6)


def test_fresh_head_leaves_proposals_unchanged_and_scores_one_half():
    head = BoxHead(in_channels=5, resolution=8, channels=16)
    deltas, objectness = head(torch.randn(4, 5, 8, 8, 8))
    assert torch.equal(deltas, torch.zeros(4, 7)) and torch.equal(objectness, torch.zeros(4))
    proposals = _boxes(4)
    refined = apply_box_deltas(proposals, deltas.double())
    assert all(torch.equal(a, b) for a, b in zip(refined, proposals))


def test_reset_parameters_gives_a_new_head_of_the_same_seed():
    """A trained head reset under a torch seed holds what a head built under that seed holds (every parameter
    and GroupNorm affine), and again leaves proposals unchanged."""
    torch.manual_seed(3)
    new = BoxHead(in_channels=5, resolution=8, channels=16)
    torch.manual_seed(0)
    head = BoxHead(in_channels=5, resolution=8, channels=16)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.add_(torch.randn_like(parameter))  # as if trained: every weight moved, the last layer too
    assert not torch.equal(head.cnn[0].weight, new.cnn[0].weight)
    torch.manual_seed(3)
    head.reset_parameters()
    new_state, state = new.state_dict(), head.state_dict()
    assert state.keys() == new_state.keys() and all(torch.equal(state[k], new_state[k]) for k in state)
    deltas, objectness = head(torch.randn(2, 5, 8, 8, 8))
    assert torch.equal(deltas, torch.zeros(2, 7)) and torch.equal(objectness, torch.zeros(2))


def test_context_boxes_grow_about_the_centre():
    boxes = _boxes(3)
    grown = context_boxes(boxes, 1.5, 0.02)
    assert torch.equal(grown.center, boxes.center) and torch.equal(grown.yaw, boxes.yaw)
    assert torch.allclose(grown.size, boxes.size * 1.5 + 0.04)


def test_head_learns_a_size_correction():
    """A head trained on hull-like volumes (boxes 1.2x too tall) learns to shrink the height."""
    torch.manual_seed(0)
    head = BoxHead(in_channels=1, resolution=8, channels=16, context=1.0, margin=0.0)
    # volumes: occupied up to 5/6 of the box height, which is 1.2x the object's
    volume = torch.zeros(16, 1, 8, 8, 8)
    volume[..., :7] = 1.0
    target = torch.zeros(16, 7)
    target[:, 5] = math.log(1 / 1.2)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(150):
        deltas, _ = head(volume)
        loss = torch.nn.functional.mse_loss(deltas, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(head(volume)[0][:, 5].mean().detach()) == pytest.approx(math.log(1 / 1.2), abs=0.02)


def test_geometry_head_reads_only_opacity_and_the_carved_hull():
    """inputs="geometry": the head is its 2-channel twin applied to the last two channels; F_v does not reach it."""
    torch.manual_seed(0)
    head = BoxHead(in_channels=6, resolution=8, channels=16, inputs="geometry")
    with torch.no_grad():  # a trained head, not the fresh one whose last layer is zero
        for parameter in head.mlp[-1].parameters():
            parameter.normal_()
    twin = BoxHead(in_channels=2, resolution=8, channels=16)
    twin.load_state_dict(head.state_dict())
    volumes = torch.randn(3, 6, 8, 8, 8)
    deltas, objectness = head(volumes)
    twin_deltas, twin_objectness = twin(volumes[:, -2:])
    assert torch.equal(deltas, twin_deltas) and torch.equal(objectness, twin_objectness)
    other_look = volumes.clone()
    other_look[:, :4] = torch.randn(3, 4, 8, 8, 8)  # other F_v, same geometry
    assert torch.equal(head(other_look)[1], objectness)
    other_shape = volumes.clone()
    other_shape[:, -2:] = torch.rand(3, 2, 8, 8, 8)
    assert not torch.allclose(head(other_shape)[1], objectness)
    full = BoxHead(in_channels=6, resolution=8, channels=16)
    with torch.no_grad():
        for parameter in full.mlp[-1].parameters():
            parameter.normal_()
    assert not torch.allclose(full(other_look)[1], full(volumes)[1])  # the default head reads F_v
    with pytest.raises(ValueError, match="expected 6 channels"):
        head(volumes[:, :5])
    with pytest.raises(ValueError, match="inputs must be 'all' or 'geometry'"):
        BoxHead(in_channels=6, inputs="colour")


def _fit(head, volume, sizes, target, steps=150):
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(head(volume, sizes)[0][:, 5], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def test_size_input_tells_apart_what_the_stretched_volume_cannot():
    """Two proposals whose RoI volumes are the same (the volume is stretched to the box) but one is a voxel
    tall, the hull's tent over a flat part that needs halving, and one is 5 voxels tall and right: a head
    reading the sizes learns both corrections, a head without can only split the difference."""
    volume = torch.zeros(4, 1, 4, 4, 4)
    volume[..., 1:3] = 1.0
    sizes = torch.tensor([[0.3, 0.2, 0.04], [0.3, 0.2, 0.20]]).repeat(2, 1)
    target = torch.tensor([math.log(0.5), 0.0]).repeat(2)
    torch.manual_seed(0)
    with_size = BoxHead(in_channels=1, resolution=4, channels=8, size_input=True, size_unit=0.04)
    torch.manual_seed(0)
    without = BoxHead(in_channels=1, resolution=4, channels=8)
    assert _fit(with_size, volume, sizes, target) < 1e-3
    assert _fit(without, volume, sizes, target) > 0.1  # the best constant leaves (log 2 / 2)^2 = 0.12
    shrink = with_size(volume[:2], sizes[:2])[0][:, 5].detach()
    assert shrink[0] == pytest.approx(math.log(0.5), abs=0.05) and shrink[1] == pytest.approx(0.0, abs=0.05)


def test_size_input_is_the_log_size_in_units_and_is_required():
    """The MLP's extra inputs are log(size / size_unit), read by the first linear layer's last 3 columns."""
    torch.manual_seed(0)
    head = BoxHead(in_channels=2, resolution=4, channels=8, size_input=True, size_unit=0.04)
    volumes = torch.randn(3, 2, 4, 4, 4)
    sizes = torch.tensor([[0.04, 0.08, 0.02], [0.3, 0.2, 0.1], [0.12, 0.12, 0.04]])
    first = head.mlp[0]
    features = head.cnn(volumes).flatten(1)
    expected = first(torch.cat([features, torch.log(sizes / 0.04)], dim=1))
    hidden = []
    handle = first.register_forward_hook(lambda module, inputs, output: hidden.append(output))
    deltas, objectness = head(volumes, sizes)
    handle.remove()
    assert torch.allclose(hidden[0], expected, atol=1e-6)
    assert torch.equal(deltas, torch.zeros(3, 7)) and torch.equal(objectness, torch.zeros(3))  # fresh: no change
    with pytest.raises(ValueError, match="size_input needs sizes"):
        head(volumes)
    with pytest.raises(ValueError, match="size_input needs sizes"):
        head(volumes, sizes[:2])
    with pytest.raises(ValueError, match="size_unit must be > 0"):
        BoxHead(in_channels=2, size_input=True, size_unit=0.0)
    plain = BoxHead(in_channels=2, resolution=4, channels=8)
    assert torch.equal(plain(volumes, sizes)[1], plain(volumes)[1])  # a head without the input ignores sizes
