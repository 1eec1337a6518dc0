"""oddsparse.eval: metrics and evaluation loops."""
from oddsparse.eval.metrics import (DEFAULT_COUNT_BINS, ObjectOutcomes, SceneAnnotation, ScenePrediction,
                                    binary_auroc, evaluate_objects, match_boxes, object_outcomes,
                                    summarize_outcomes)

__all__ = ["DEFAULT_COUNT_BINS", "ObjectOutcomes", "SceneAnnotation", "ScenePrediction", "binary_auroc",
           "evaluate_objects", "match_boxes", "object_outcomes", "summarize_outcomes"]
