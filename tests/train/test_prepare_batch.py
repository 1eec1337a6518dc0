"""prepare_batch refuses batches whose scenes hold different numbers of input or target views (padded views)."""
from __future__ import annotations

import pytest
import torch

from oddsparse.data import collate_scenes
from oddsparse.structures import Boxes, Scene
from oddsparse.train.engine import prepare_batch


def _scene(views: int, name: str, seed: int) -> Scene:
    gen = torch.Generator().manual_seed(seed)
    objects, height, width = 2, 8, 8
    return Scene(images=torch.randint(0, 256, (views, height, width, 3), dtype=torch.uint8, generator=gen),
                 masks=torch.rand(objects, views, height, width, generator=gen) > 0.5,
                 depth=torch.rand(views, height, width, generator=gen) + 1.0,
                 K=torch.eye(3).repeat(views, 1, 1), world_to_cam=torch.eye(4).repeat(views, 1, 1),
                 boxes=Boxes(torch.rand(objects, 3, generator=gen), torch.ones(objects, 3),
                             torch.eye(3).repeat(objects, 1, 1)),
                 labels=torch.tensor([1, 0]), anomaly_types=["crack", ""], object_names=["a", "b"],
                 name=name, category="parts", view_ids=torch.arange(views))


def _item(inputs: int, targets: int, index: int) -> dict:
    return {"inputs": _scene(inputs, f"parts_{index:04d}", index),
            "targets": _scene(targets, f"parts_{index:04d}", 100 + index), "index": index}


def test_equal_view_counts_prepare_and_union_the_target_masks():
    items = [_item(2, 3, 0), _item(2, 3, 1)]
    batch = prepare_batch(collate_scenes(items), "cpu")
    assert batch.images.shape[:2] == (2, 2) and batch.target_images.shape[:2] == (2, 3)
    for b, item in enumerate(items):  # the target mask of a view is the union of its objects' masks
        assert torch.equal(batch.target_masks[b].bool(), item["targets"].masks.any(dim=0))


@pytest.mark.parametrize("inputs, targets, field", [((2, 3), (2, 2), "input"), ((2, 2), (3, 2), "target")])
def test_padded_views_are_refused(inputs, targets, field):
    """A padded view would be encoded (inputs) or rendered and compared (targets) as if it were real."""
    batch = collate_scenes([_item(inputs[0], targets[0], 0), _item(inputs[1], targets[1], 1)])
    with pytest.raises(ValueError, match=f"same number of {field} views"):
        prepare_batch(batch, "cpu")
