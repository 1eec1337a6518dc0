"""SceneModel.render: every target view is rendered from its own scene's fields."""
from __future__ import annotations

import torch

from oddsparse.geometry.cameras import look_at
from oddsparse.geometry.grid import VoxelGrid
from oddsparse.models.fields import VoxelFields
from oddsparse.renderers.raymarch import render_views
from oddsparse.structures.sparse import SparseVoxels
from reference_eval import tiny_detector


def test_each_target_view_renders_its_own_scene():
    """B = 2 scenes (blocks of other colours, features and places), T = 2 target views each: row b * T + t of
    the batched render equals scene b alone rendered from its view t."""
    grid = VoxelGrid(shape=(8, 8, 4), voxel_size=0.1, origin=(-0.4, -0.4, 0.0))
    dense = torch.zeros(2, 1 + 3 + 2, *grid.shape)
    dense[0, :, 1:4, 2:6, :3] = torch.tensor([30.0, 0.9, 0.1, 0.1, 1.0, -1.0])[:, None, None, None]
    dense[1, :, 4:7, 1:5, 1:] = torch.tensor([30.0, 0.1, 0.2, 0.9, -0.5, 2.0])[:, None, None, None]
    fields = VoxelFields(SparseVoxels.from_dense(dense, grid))
    eyes = torch.tensor([[[2.0, 0.0, 0.3], [0.0, 2.0, 0.5]], [[-2.0, 0.3, 0.4], [1.5, 1.5, 0.2]]])
    world_to_cam = look_at(eyes, torch.tensor([0.0, 0.0, 0.2]).expand(2, 2, 3)).float()  # (B, T, 4, 4)
    K = torch.tensor([[12.0, 0.0, 6.0], [0.0, 12.0, 6.0], [0.0, 0.0, 1.0]]).expand(2, 2, 3, 3)
    scene_model = tiny_detector().scene_model
    batched = scene_model.render(fields, K, world_to_cam, (12, 12), (12, 12), num_samples=32)
    assert batched["rgb"].shape == (4, 3, 12, 12)
    for b in range(2):
        alone = SparseVoxels.from_dense(dense[b:b + 1], grid)
        for t in range(2):
            want = render_views(alone, K[b, t:t + 1], world_to_cam[b, t:t + 1], (12, 12), num_samples=32)
            assert want["opacity"].amax() > 0.5  # the view sees its scene's block
            for key in ("rgb", "opacity", "features"):
                torch.testing.assert_close(batched[key][b * 2 + t], want[key][0])
