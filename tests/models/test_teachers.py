"""Teachers (local DINOv2 checkpoint, dense SIFT), PCA and the on-disk feature cache."""

import numpy as np
import pytest
import torch

from oddsparse.models.teachers import PCA, DenseSiftTeacher, DinoV2Teacher, TeacherCache, fit_pca, fit_teacher_pca


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_dinov2_loads_local_checkpoint_and_returns_patch_maps(tmp_path):
    timm = pytest.importorskip("timm")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    source = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False, num_classes=0, img_size=56)
    path = tmp_path / "dinov2_small.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))

    teacher = DinoV2Teacher(path, image_size=56)
    loaded = teacher.model.state_dict()
    assert loaded.keys() == source.state_dict().keys()
    for name, value in source.state_dict().items():
        assert torch.equal(loaded[name], value), name
    images = torch.rand(2, 3, 64, 64)
    features = teacher(images)
    assert features.shape == (2, 384, 4, 4) and teacher.out_channels == 384
    # patch map (row i, col j) is the token of patch i * 4 + j of the normalised, resized image
    resized = torch.nn.functional.interpolate(images, size=(56, 56), mode="bilinear", align_corners=False,
                                              antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = source.eval().forward_features((resized - mean) / std)
    torch.testing.assert_close(features[1, :, 2, 3], tokens[1, 1 + 2 * 4 + 3])
    with pytest.raises(FileNotFoundError, match="checkpoint_path"):
        DinoV2Teacher(tmp_path / "missing.safetensors")


def test_dense_sift_shape_norm_and_locality():
    teacher = DenseSiftTeacher(stride=8)
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(1, 3, 64, 96, generator=generator)
    features = teacher(images)
    assert features.shape == (1, 128, 8, 12)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(1, 8, 12), rtol=1e-4, atol=1e-4)
    # changing the pixels of one far corner cell leaves the descriptors of the opposite corner alone
    edited = images.clone()
    edited[..., :8, :8] = torch.rand(1, 3, 8, 8, generator=generator)
    changed = teacher(edited)
    assert not torch.allclose(changed[..., 0, 0], features[..., 0, 0])
    torch.testing.assert_close(changed[..., 4:, 6:], features[..., 4:, 6:])
    with pytest.raises(ValueError, match="images"):
        teacher(torch.rand(1, 64, 64))


@pytest.mark.parametrize("stride", [2, 4, 6, 8])
def test_dense_sift_descriptor_k_is_centred_on_stride_cell_k(stride):
    """An H x W image gives an (H / stride) x (W / stride) map whose descriptor k responds to a one-pixel column
    over a window centred on pixel k * stride + (stride - 1) / 2 (the index + 0.5 convention of the renders): the
    mean of the columns that change descriptor k, by a loop over impulse columns. (Before: 2 px up-left, and
    H / stride + 1 descriptors at strides 2 and 4.)"""
    teacher = DenseSiftTeacher(stride=stride)
    size = 48
    blank = teacher(torch.full((1, 3, size, size), 0.5))
    assert blank.shape[-2:] == (size // stride, size // stride)
    hits = {k: [] for k in range(size // stride)}
    for column in range(size):
        image = torch.full((1, 3, size, size), 0.5)
        image[..., column] = 1.0
        changed = (teacher(image) - blank).abs().sum(dim=(0, 1, 2)) > 1e-6  # (w,) descriptors it reaches
        for k in torch.nonzero(changed)[:, 0].tolist():
            hits[k].append(column)
    inner = [k for k, columns in hits.items() if columns and min(columns) > 0 and max(columns) < size - 1]
    assert len(inner) >= 2
    for k in inner:  # windows the image border does not cut
        assert sum(hits[k]) / len(hits[k]) == pytest.approx(k * stride + (stride - 1) / 2), (k, hits[k])


def test_dense_sift_refuses_strides_whose_window_it_cannot_centre():
    with pytest.raises(ValueError, match="stride must be <= 12"):
        DenseSiftTeacher(stride=14)


def test_fit_pca_matches_sklearn_and_round_trips(tmp_path):
    decomposition = pytest.importorskip("sklearn.decomposition")
    generator = torch.Generator().manual_seed(2)
    basis = torch.randn(6, 10, generator=generator, dtype=torch.float64)
    scales = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    features = (torch.randn(500, 6, generator=generator, dtype=torch.float64) * scales) @ basis + 3.0
    pca = fit_pca(features, out_dim=4)
    reference = decomposition.PCA(n_components=4).fit(features.numpy())
    ours = pca.transform(features.float()).double()
    theirs = torch.from_numpy(reference.transform(features.numpy()))
    signs = torch.sign((ours * theirs).sum(0))  # components agree up to sign
    torch.testing.assert_close(ours, theirs * signs, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(pca.explained_variance.double(), torch.from_numpy(reference.explained_variance_),
                               rtol=1e-4, atol=1e-6)

    path = tmp_path / "pca.npz"
    pca.save(path)
    loaded = PCA.load(path)
    assert torch.equal(loaded.components, pca.components) and torch.equal(loaded.mean, pca.mean)
    maps = features[:8].float().T.reshape(1, 10, 2, 4)
    torch.testing.assert_close(loaded.transform_maps(maps)[0, :, 1, 2], pca.transform(maps[0, :, 1, 2]))
    np.savez(tmp_path / "bad.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match="bad.npz"):
        PCA.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="out_dim"):
        fit_pca(features, out_dim=11)


class _CountingTeacher(DenseSiftTeacher):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def extract(self, images):
        self.calls += images.shape[0]
        return super().extract(images)


def test_teacher_cache_computes_once_and_reloads(tmp_path):
    teacher = _CountingTeacher(stride=8)
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(5, 3, 32, 32, generator=generator)
    pca = fit_teacher_pca(teacher, [images[:3], images[3:]], out_dim=16)
    teacher.calls = 0
    cache = TeacherCache(tmp_path, teacher, pca, batch_size=2)
    first = cache.get("scene_001", images)
    assert first.shape == (5, 16, 4, 4) and teacher.calls == 5
    assert ("scene_001", (32, 32)) in cache
    expected = pca.transform_maps(DenseSiftTeacher(stride=8)(images))
    torch.testing.assert_close(first, expected)
    again = TeacherCache(tmp_path, teacher, pca).get("scene_001", images)
    assert teacher.calls == 5 and torch.equal(again, first)  # read from disk, not recomputed
    files = list(tmp_path.rglob("*"))
    assert not [f for f in files if f.name.endswith(".tmp")]
    stored = cache.path("scene_001", (32, 32))
    assert np.load(stored, allow_pickle=False).shape == (5, 16, 4, 4)
    plain = tmp_path / "plain.txt"  # the cache file gets the mode a plain open() gives, not mkstemp's 0o600
    plain.write_text("x")
    assert stored.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    # a different PCA or image size gets a different file
    other = TeacherCache(tmp_path, teacher, fit_pca(torch.randn(50, 128, generator=generator), 16))
    assert other.path("scene_001", (32, 32)) != stored
    with pytest.raises(ValueError, match="cached features"):
        cache.get("scene_001", images[:2])
    with pytest.raises(ValueError, match="scene_name"):
        cache.path("../escape", (32, 32))


def test_teacher_cache_computes_on_the_teachers_device(tmp_path):
    """Images read from disk are CPU tensors; a teacher moved to another device (a GPU in training) gets them there.
    The meta device stands in for a GPU: a CPU input would fail against its weights."""
    teacher = DenseSiftTeacher(stride=8).to("meta")
    features = TeacherCache(tmp_path, teacher).compute(torch.rand(3, 3, 32, 32))
    assert features.device.type == "meta" and features.shape == (3, 128, 4, 4)
