"""Evaluation beside detectron2's mIoU: FLOPs and routing statistics, result summaries."""
from .build import RenamedEvaluator, build_sem_seg_evaluator, load_sem_seg_label
from .report import RESULTS_FILE, report_results, summarize_results
from .routing import RoutingEvaluator

__all__ = [
    "RESULTS_FILE",
    "RenamedEvaluator",
    "RoutingEvaluator",
    "build_sem_seg_evaluator",
    "load_sem_seg_label",
    "report_results",
    "summarize_results",
]
