"""oddsparse.eval: metrics, evaluation loops and parameter-free baselines."""
from oddsparse.eval.baselines import difference_to_others, distance_to_others
from oddsparse.eval.compare import bootstrap_object_auroc, compare_reports
from oddsparse.eval.metrics import (DEFAULT_COUNT_BINS, ObjectOutcomes, SceneAnnotation, ScenePrediction,
                                    binary_auroc, evaluate_objects, match_boxes, object_outcomes,
                                    summarize_outcomes)

__all__ = ["DEFAULT_COUNT_BINS", "ObjectOutcomes", "SceneAnnotation", "ScenePrediction", "binary_auroc",
           "bootstrap_object_auroc", "compare_reports",
           "difference_to_others", "distance_to_others", "evaluate_objects", "match_boxes", "object_outcomes", "summarize_outcomes"]
