"""One-line summaries of evaluation results (mIoU beside GFLOPs), logged and saved."""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, List, Mapping, Optional, Sequence

from detectron2.utils.file_io import PathManager

__all__ = ["RESULTS_FILE", "report_results", "summarize_results"]

#: Name of the JSON file (in the output folder) that :func:`report_results` writes.
RESULTS_FILE = "eval_results.json"

logger = logging.getLogger(__name__)


def _is_task_level(results: Mapping[str, Any]) -> bool:
    """Whether ``results`` is ``{task: {metric: value}}`` (one dataset) rather than
    ``{dataset: {task: {metric: value}}}``."""
    return all(
        isinstance(v, Mapping) and not any(isinstance(x, Mapping) for x in v.values())
        for v in results.values()
    )


def _summarize_tasks(tasks: Mapping[str, Mapping[str, float]], suffix: str) -> str:
    parts = []
    sem_seg = tasks.get("sem_seg" + suffix, {})
    if "mIoU" in sem_seg:
        parts.append(f"mIoU {sem_seg['mIoU']:.2f}")
    official = tasks.get("cityscapes_sem_seg" + suffix, {})
    if "IoU" in official:
        parts.append(f"Cityscapes IoU {official['IoU']:.2f}")
    classification = tasks.get("classification" + suffix, {})
    if "top1" in classification:
        parts.append(f"top-1 {classification['top1']:.2f} | top-5 {classification['top5']:.2f}")
    routing = tasks.get("routing" + suffix, {})
    for kind in ("real", "expected"):
        key = f"GFLOPs_{kind}"
        if key in routing:
            parts.append(
                f"{kind} GFLOPs {routing[key]:.3f} "
                f"(min {routing[key + '_min']:.3f}, max {routing[key + '_max']:.3f})"
            )
    if "gates_open_pct" in routing:
        parts.append(f"gates open {routing['gates_open_pct']:.1f}%")
    return " | ".join(parts)


def summarize_results(
    results: Mapping[str, Any], dataset_names: Sequence[str] = ()
) -> List[str]:
    """One line per dataset (and per test-time-augmented run, suffix ``_TTA``), e.g.
    ``"cityscapes_fine_sem_seg_val: mIoU 74.31 | real GFLOPs 58.912 (min ..., max ...) |
    ..."``. ``results`` is what ``DefaultTrainer.test`` returns: task level for one dataset
    (named by ``dataset_names[0]`` when given), dataset level for several."""
    if not results:
        return []
    if _is_task_level(results):
        by_dataset = {dataset_names[0] if len(dataset_names) == 1 else "results": results}
    else:
        by_dataset = dict(results)
    lines = []
    for name, tasks in by_dataset.items():
        for suffix in ("", "_TTA"):
            summary = _summarize_tasks(tasks, suffix)
            if summary:
                lines.append(f"{name}{' (TTA)' if suffix else ''}: {summary}")
    return lines


def report_results(
    results: Optional[Mapping[str, Any]], output_dir: str, dataset_names: Sequence[str] = ()
) -> List[str]:
    """Log :func:`summarize_results` and write ``results`` to ``output_dir/RESULTS_FILE``.

    Returns the summary lines (empty when there are no results, e.g. on other ranks).
    """
    if not results:
        return []
    lines = summarize_results(results, dataset_names)
    for line in lines:
        logger.info(line)
    if output_dir:
        PathManager.mkdirs(output_dir)
        with PathManager.open(os.path.join(output_dir, RESULTS_FILE), "w") as f:
            json.dump(_to_builtin(results), f, indent=2)
    return lines


def _to_builtin(obj: Any) -> Any:
    """Nested mappings of numbers as plain dicts and floats, NaN as null (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): _to_builtin(v) for k, v in obj.items()}
    value = float(obj)
    return None if math.isnan(value) else value
