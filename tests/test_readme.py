"""The README's Python examples run as written (paths replaced by test files) and do what they say."""
import re
from pathlib import Path

import torch

from oddsparse.geometry.boxes import as_yaw_boxes, box_iou_3d
from reference_data import require_sample
from reference_eval import save_tiny_checkpoint, tiny_dataset

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_two_examples():
    blocks = python_blocks()
    assert len(blocks) == 2 and "read_scene" in blocks[0] and "predict_scene" in blocks[1]


def test_readme_reading_and_carving_example_on_the_real_sample():
    sample = require_sample()
    code = python_blocks()[0].replace('"path/to/banana_028-sample"', repr(str(sample)))
    assert repr(str(sample)) in code
    namespace = {}
    exec(compile(code, f"{README}:python block 1", "exec"), namespace)
    scene, boxes = namespace["scene"], namespace["boxes"]
    assert scene.images.shape == (4, 128, 128, 3) and scene.masks.shape == (3, 4, 128, 128)
    assert scene.labels.tolist() == [1, 0, 0]  # the sample's crack is its first object
    # carving the 4 views' union mask finds each of the 3 bananas, no GT count given
    assert len(boxes) == 1 and len(boxes[0]) == 3
    iou = box_iou_3d(boxes[0], as_yaw_boxes(scene.boxes))  # (estimated, GT)
    assert (iou.max(dim=0).values > 0.25).all(), iou


def test_readme_prediction_example(tmp_path):
    root = tiny_dataset(tmp_path)
    scene = sorted(p for p in root.iterdir() if (p / "scene3d.metadata.json").is_file())[0]
    checkpoint = save_tiny_checkpoint(tmp_path / "final.pt", root)
    code = "import oddsparse as osp\n" + python_blocks()[1].replace('"runs/partsad/final.pt"', repr(str(checkpoint)))
    code = code.replace('"path/to/scene"', repr(str(scene)))
    namespace = {}
    exec(compile(code, f"{README}:python block 2", "exec"), namespace)
    prediction, detector = namespace["prediction"], namespace["detector"]
    assert not detector.training and namespace["checkpoint"]["detector_kwargs"]
    scores = prediction.scores
    assert scores.dim() == 1 and ((scores >= 0) & (scores <= 1)).all()
    assert torch.equal(prediction.labels, (scores > 0.5).long())
    boxes = prediction.boxes  # the README's comment: boxes (center, size, yaw), scores, labels
    assert boxes.center.shape == boxes.size.shape == (prediction.num_objects, 3)
    assert boxes.yaw.shape == scores.shape == (prediction.num_objects,)


def test_every_osp_name_the_readme_uses_resolves_after_a_plain_import():
    """``osp.x.y`` as the README writes it, after ``import oddsparse as osp`` alone: re-exports and the generator
    subpackage loaded on first access (``osp.data.synth``), not only after importing the defining module."""
    import subprocess
    import sys

    names = sorted(set(re.findall(r"\bosp\.([A-Za-z_][\w.]*\w)", README.read_text())))
    assert {"data.synth.render.EnvironmentSpec", "geometry.consensus_boxes", "load_detector"} <= set(names)
    script = ("import functools, sys, oddsparse as osp\n"
              "assert 'oddsparse.data.synth' not in sys.modules, 'import oddsparse loads the generator'\n"
              f"for name in {names!r}:\n"
              "    functools.reduce(getattr, name.split('.'), osp)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)  # a fresh interpreter
    assert result.returncode == 0, result.stderr
