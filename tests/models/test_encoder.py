"""ResNetFPN and ForegroundHead: shapes, normalisation, local weight loading (nothing downloaded)."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

from oddsparse.models.encoder import (IMAGENET_MEAN, IMAGENET_STD, ForegroundHead, ForegroundRefiner, ResNetFPN,
                                      load_state_dict_file,
                                      upsample_logits)


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("height,width", [(64, 96), (70, 50)])
def test_output_is_stride_4(height, width):
    encoder = ResNetFPN(depth=18, out_channels=16).eval()
    out = encoder(torch.rand(2, 3, height, width))
    assert out.shape == (2, 16, -(-height // 4), -(-width // 4))
    assert torch.isfinite(out).all()


def test_rejects_bad_shapes_and_depth():
    with pytest.raises(ValueError, match="depth"):
        ResNetFPN(depth=19)
    with pytest.raises(ValueError, match=r"\(B\*M, 3, H, W\)"):
        ResNetFPN(depth=18)(torch.rand(2, 4, 32, 32))


def test_imagenet_normalisation_is_inside():
    """The stem sees (image - mean) / std: compare the first conv against a hand-normalised input."""
    encoder = ResNetFPN(depth=18).eval()
    images = torch.rand(1, 3, 32, 32)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    captured = {}
    encoder.stem[0].register_forward_hook(lambda module, inputs, output: captured.update(x=inputs[0]))
    encoder(images)
    torch.testing.assert_close(captured["x"], (images - mean) / std)
    # A constant image equal to the ImageNet mean normalises to zero.
    encoder(mean.expand(1, 3, 32, 32).clone())
    assert captured["x"].abs().max() < 1e-6


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_pretrained_backbone_loads_from_local_file(tmp_path, suffix):
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # make running statistics non-trivial so that buffers are checked too
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    state = {k: v.clone().contiguous() for k, v in reference.state_dict().items()}
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    encoder = ResNetFPN(depth=18, pretrained_backbone_path=path)
    torch.testing.assert_close(encoder.stem[0].weight, state["conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(encoder.stem[1].running_var, state["bn1.running_var"], rtol=0, atol=0)
    for index, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
        stage_state = encoder.stages[index].state_dict()
        for key, value in stage_state.items():
            torch.testing.assert_close(value, state[f"{name}.{key}"], rtol=0, atol=0)
    # The whole output equals the reference ResNet's features pushed through the same FPN.
    encoder.eval()
    reference.eval()
    images = torch.rand(1, 3, 64, 64)
    x = (images - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
    c2 = reference.layer1(x)
    torch.testing.assert_close(encoder.stages[0](encoder.stem((images - encoder.mean) / encoder.std)), c2)
    c3 = reference.layer2(c2)
    c4 = reference.layer3(c3)
    c5 = reference.layer4(c4)
    fpn = torchvision.ops.FeaturePyramidNetwork([64, 128, 256, 512], encoder(images).shape[1])
    fpn.load_state_dict(encoder.fpn.state_dict())  # a separate FPN of the same weights
    with torch.no_grad():
        levels = list(fpn(OrderedDict(c2=c2, c3=c3, c4=c4, c5=c5)).values())  # P2 .. P5
        want = levels[0] + sum(F.interpolate(p, size=levels[0].shape[-2:], mode="bilinear", align_corners=False)
                               for p in levels[1:])
        assert all(p.abs().amax() > 1e-3 for p in levels)  # every level adds something to the sum
        torch.testing.assert_close(encoder(images), want)


def test_missing_keys_raise_with_file_name(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer2.0.conv1.weight"]
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"broken\.pt.*missing keys: layer2\.0\.conv1\.weight"):
        ResNetFPN(depth=18, pretrained_backbone_path=path)
    state["layer2.0.conv1.weight"] = torch.zeros(1, 1, 3, 3)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "shapes.pt")
    with pytest.raises(ValueError, match=r"shapes\.pt.*unexpected keys: extra\.weight.*layer2\.0\.conv1\.weight: file"):
        ResNetFPN(depth=18, pretrained_backbone_path=tmp_path / "shapes.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        ResNetFPN(depth=18, pretrained_backbone_path=tmp_path / "nope.pt")


def test_non_state_dict_file_is_rejected(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="list.pt.*state_dict"):
        load_state_dict_file(path)


def test_whole_module_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    source = ResNetFPN(depth=18, out_channels=8)
    path = tmp_path / "encoder.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    target = ResNetFPN(depth=18, out_channels=8, weights_path=path)
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), name
    images = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(source.eval()(images), target.eval()(images), rtol=0, atol=0)


def test_frozen_batchnorm_is_fixed_in_training():
    encoder = ResNetFPN(depth=18, frozen_batchnorm=True).train()
    before = encoder.stem[1].running_mean.clone()
    encoder(torch.rand(2, 3, 32, 32))
    assert torch.equal(before, encoder.stem[1].running_mean)
    assert not any("num_batches_tracked" in k for k in encoder.state_dict())


def test_group_norm_reads_each_image_alone_in_both_modes():
    # per-image statistics: an image's features do not depend on the images batched with it, nor on the mode;
    # batch statistics (the contrast that makes this check able to fail) do depend on both
    torch.manual_seed(0)
    images = torch.rand(3, 3, 64, 64)
    images[1:] *= 0.3  # other scenes, another light
    group = ResNetFPN(depth=18, out_channels=8, norm="group").train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in group.modules())
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in group.modules()) == 20  # stem + 2 x 2 x 4 blocks + 3 downsamples
    with torch.no_grad():  # in float64: float32 convolutions of a batch and of one image sum in other orders
        group, inputs = group.double(), images.double()  # (1.7e-5 apart at features up to 15)
        alone, batched = group(inputs[:1]), group(inputs)[:1]
        torch.testing.assert_close(batched, alone, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(group.eval()(inputs[:1]), alone, rtol=1e-10, atol=1e-10)
    batch = ResNetFPN(depth=18, out_channels=8).train()
    with torch.no_grad():
        assert (batch(images)[:1] - batch(images[:1])).abs().max() > 1e-3
    assert ResNetFPN(depth=18, frozen_batchnorm=True).norm == "frozen"


def test_encoder_norm_refuses_unknown_names_and_pretrained_batchnorm_weights(tmp_path):
    with pytest.raises(ValueError, match="norm must be one of"):
        ResNetFPN(depth=18, norm="layer")
    path = tmp_path / "resnet18.pt"
    with pytest.raises(ValueError, match=f"norm='group' cannot load .*{path.name}"):
        ResNetFPN(depth=18, norm="group", pretrained_backbone_path=path)
    with pytest.raises(ValueError, match="frozen_batchnorm=True asks for norm='frozen' but norm='group'"):
        ResNetFPN(depth=18, norm="group", frozen_batchnorm=True)
    assert ResNetFPN(depth=18, norm="frozen", frozen_batchnorm=True).norm == "frozen"


def test_foreground_head_and_upsampling():
    head = ForegroundHead(16, hidden=8, prior=0.2)
    features = torch.zeros(2, 16, 8, 12)
    logits = head(features)
    assert logits.shape == (2, 1, 8, 12)
    up = upsample_logits(logits, (32, 48))
    assert up.shape == (2, 1, 32, 48)
    constant = torch.full((1, 1, 4, 4), 1.5)
    torch.testing.assert_close(upsample_logits(constant, (16, 16)), torch.full((1, 1, 16, 16), 1.5))
    # Initial probability is the prior when the hidden activations vanish.
    with torch.no_grad():
        head.layers[4].weight.zero_()
    torch.testing.assert_close(torch.sigmoid(head(features)), torch.full((2, 1, 8, 12), 0.2))


def test_foreground_refiner_starts_at_the_upsampled_logits_and_learns_sharp_edges():
    """A fresh refiner returns the bilinear upsampling exactly; a few Adam steps on one image whose
    foreground is its bright pixels beat the upsampled coarse map (blurred edges) by a wide margin."""
    torch.manual_seed(0)
    refiner = ForegroundRefiner(4, hidden=8)
    rows, cols = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    disc = (rows - 15.3) ** 2 + (cols - 17.1) ** 2 < 6.7 ** 2
    bars = ((cols > 25) & (cols < 27)) | ((rows > 3) & (rows < 5))  # 1-pixel bars: a stride-4 map sees 1/4
    mask = (disc | bars)[None, None]
    image = mask.float().expand(1, 3, 32, 32).clone()
    coarse = F.adaptive_avg_pool2d(mask.float(), (8, 8))  # the best a stride-4 map can know
    logits = torch.logit(coarse.clamp(0.02, 0.98))
    features = torch.zeros(1, 4, 8, 8)
    fresh = refiner(image, features, logits)
    torch.testing.assert_close(fresh, upsample_logits(logits, (32, 32)), rtol=0, atol=0)

    def errors(out):
        return int(((out > 0) != mask).sum())

    optimizer = torch.optim.Adam(refiner.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.binary_cross_entropy_with_logits(refiner(image, features, logits), mask.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        refined = refiner(image, features, logits)
    assert errors(fresh) >= 20  # the blurred edge pixels
    assert errors(refined) <= errors(fresh) // 4, (errors(refined), errors(fresh))


def test_scene_model_with_refiner_predicts_full_resolution_foreground():
    from oddsparse.geometry.grid import VoxelGrid
    from oddsparse.models.scene_model import SceneModel

    torch.manual_seed(0)
    model = SceneModel(grid=VoxelGrid.centered(shape=(16, 16, 8), voxel_size=0.08), feature_channels=8,
                       backbone="dense", backbone_channels=(8, 8, 8, 8), feature_dim=8, foreground_refine=True)
    images = torch.rand(1, 2, 32, 32, 3)
    features, logits = model.encode(images)
    assert features.shape[-2:] == (8, 8) and logits.shape == (1, 2, 32, 32)
    plain = SceneModel(grid=VoxelGrid.centered(shape=(16, 16, 8), voxel_size=0.08), feature_channels=8,
                       backbone="dense", backbone_channels=(8, 8, 8, 8), feature_dim=8)
    plain.load_state_dict(model.state_dict(), strict=False)  # same weights, no refiner
    _, coarse = plain.encode(images)
    # the fresh refiner is exactly the upsampled stride-4 map
    torch.testing.assert_close(logits, upsample_logits(coarse.flatten(0, 1)[:, None], (32, 32))[:, 0].unflatten(0, (1, 2)))


class _CellMeanEncoder(torch.nn.Module):
    """A stand-in for the ResNet with its geometry and nothing else: stride-4 cell i averages input pixels
    [4i, 4i + 4) (ceil mode: a last partial cell where the input is not a multiple of 4, as the ResNet's)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1), persistent=False)

    def forward(self, images):
        red = F.avg_pool2d(images[:, :1], 4, ceil_mode=True)
        return red.expand(-1, self.channels, -1, -1)


@pytest.mark.parametrize("width", [30, 32, 62])
def test_encoded_cells_sit_where_carving_and_unprojection_read_them(width):
    """A vertical band of known columns: the centre of its response in the stride-4 map, read with the convention
    carving and unprojection use (cell j centred at (j + 0.5) W / w pixels), is the band's centre within 0.3 px at
    every image width; where W is not a multiple of 4 the cells of the image as given sat up to 3 px off."""
    from oddsparse.geometry.grid import VoxelGrid
    from oddsparse.models.scene_model import SceneModel

    model = SceneModel(grid=VoxelGrid.centered(shape=(8, 8, 4), voxel_size=0.1), feature_channels=4,
                       backbone="dense", backbone_channels=(4, 4, 4, 4), feature_dim=4)
    model.encoder = _CellMeanEncoder(4)
    left = width - 7  # a band of 4 columns near the right edge, where the drift was largest
    images = torch.zeros(1, 1, 12, width, 3)
    images[..., left:left + 4, 0] = 1.0
    features, _ = model.encode(images)
    profile = features[0, 0, 0].sum(0)  # (w,) response per cell column
    w = profile.numel()
    centre = float((profile * (torch.arange(w) + 0.5)).sum() / profile.sum()) * width / w  # pixels
    assert abs(centre - (left + 2)) < 0.3, (centre, left + 2)
