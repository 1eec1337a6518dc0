"""oddsparse: odd-one-out anomaly detection on sparse voxel scenes.

Glossary of dimension letters used in docstrings and shape comments:

    B scenes, V views, M input views per scene, T render-target views, O objects, N packed voxels,
    C channels, X/Y/Z grid axes (world x, y, z), H/W image rows/columns, R rays, S samples per ray,
    K neighbours (correspondences), r cells per axis of an object volume.

Coordinate conventions are stated once in :mod:`oddsparse.geometry.conventions`.

Layers (lower never import higher): ``utils`` < ``geometry.{conventions,cameras,grid}`` <
``structures`` < ``geometry`` ops < ``ops`` < ``renderers`` < ``models`` < ``data`` < ``train`` /
``eval`` < ``predict`` / ``cli``; recipes compose them.

Importing oddsparse on a machine without CUDA makes spconv's CPU path correct (see
:mod:`oddsparse.ops.spconv_cpu`); nothing is patched where CUDA is available.

Example:
    >>> import oddsparse as osp
    >>> grid = osp.VoxelGrid()            # 96 x 96 x 16 voxels of 4 cm
    >>> grid.shape
    (96, 96, 16)
"""
__version__ = "0.1.0"

from oddsparse import geometry, structures  # noqa: E402
from oddsparse.geometry.grid import VoxelGrid  # noqa: E402
from oddsparse.structures import Boxes, Scene, SceneBatch, SparseVoxels  # noqa: E402
from oddsparse import ops  # noqa: E402
from oddsparse import data, models, renderers  # noqa: E402
from oddsparse import eval, predict, train  # noqa: E402,A004
from oddsparse.models.detector import OddOneOutDetector, load_detector  # noqa: E402
from oddsparse.predict import predict_scene, predict_views  # noqa: E402

ops.maybe_install_cpu_guard()

__all__ = ["__version__", "geometry", "structures", "ops", "renderers", "models", "data", "train", "eval", "predict",
           "VoxelGrid", "SparseVoxels", "Scene", "SceneBatch", "Boxes", "OddOneOutDetector", "load_detector",
           "predict_scene", "predict_views"]
