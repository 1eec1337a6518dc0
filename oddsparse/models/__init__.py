"""oddsparse.models: plain ``nn.Module`` building blocks and their composition.

2D encoder and foreground head, sparse/dense 3D U-Nets, field heads, teachers, the cross-instance
matcher, the stage-1 :class:`SceneModel` and the full :class:`OddOneOutDetector`.
"""
from oddsparse.models.backbone import DenseUNet3d, SparseUNet3d, build_backbone, copy_sparse_to_dense
from oddsparse.models.encoder import ForegroundHead, ForegroundRefiner, ResNetFPN, upsample_logits
from oddsparse.models.fields import FieldHeads, VoxelFields
from oddsparse.models.teachers import (DenseSiftTeacher, DinoV2Teacher, PCA, Teacher, TeacherCache, fit_pca,
                                       fit_teacher_pca)
from oddsparse.models.matcher import AnomalyMatcher, ObjectTokens, build_object_tokens
from oddsparse.models.scene_model import SceneModel, SceneOutput
from oddsparse.models.detector import Detection, OddOneOutDetector, build_detector, load_detector

__all__ = ["ResNetFPN", "ForegroundHead", "ForegroundRefiner", "upsample_logits", "SparseUNet3d", "DenseUNet3d", "build_backbone",
           "copy_sparse_to_dense", "FieldHeads", "VoxelFields", "Teacher", "DinoV2Teacher", "DenseSiftTeacher", "PCA",
           "fit_pca", "fit_teacher_pca", "TeacherCache", "AnomalyMatcher", "ObjectTokens", "build_object_tokens",
           "SceneModel", "SceneOutput", "OddOneOutDetector", "Detection", "build_detector", "load_detector"]
