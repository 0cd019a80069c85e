"""Train one config at several budget settings and plot accuracy against real FLOPs
(``tools/budget_sweep.py``).

Each point is one ``train_net.py`` run in its own process (same config, seed and data;
only ``MODEL.BUDGET`` changes), evaluated at the end of training by the config's
evaluators (mIoU, real / expected GFLOPs mean / min / max, share of open gates). The
sweep writes, into ``--output``:

* ``POINT/``: the run's output folder (checkpoints, ``log.txt``, ``eval_results.json``),
* ``budget_sweep.json``: the table (one row per point) and the network's all-open FLOPs,
* ``budget_sweep.md``: the same table in Markdown,
* ``budget_sweep.png``: mIoU against real GFLOPs, one labelled point per setting (bars:
  min..max over the images), with the all-open FLOPs and the part no gate can remove
  (stem + decoder) marked.

Running the same command again resumes the sweep: finished points are read back, a point
whose run was interrupted continues from its last checkpoint (``--resume``), and the
table and figure are rewritten after every point.

Points are ``raw`` (no budget constraint: Dynamic-Raw) or ``LAMBDA:MU`` (budget loss
weight ``MODEL.BUDGET.LOSS_WEIGHT`` and target ``MODEL.BUDGET.LOSS_MU``)::

    export DETECTRON2_DATASETS=$(python datasets/generate_synthetic_cityscapes.py)
    python tools/budget_sweep.py --config-file configs/Synthetic/Budget-Sweep.yaml \\
        --points raw 0.8:0.6 0.8:0.4 0.8:0.2 0.8:0.1 --jobs 2 --output output/budget_sweep

Arguments after the options are config overrides for every point (``KEY VALUE`` pairs).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from dyn_seg.utils.cli import int_at_least

#: The source checkout holding ``train_net.py`` (each point runs it in its own process).
REPO = Path(__file__).resolve().parents[2]

logger = logging.getLogger("budget_sweep")

#: Files the sweep writes into its output folder.
TABLE_JSON, TABLE_MD, FIGURE = "budget_sweep.json", "budget_sweep.md", "budget_sweep.png"
#: Per point: the settings it was started with (compared on resume).
POINT_FILE = "sweep_point.json"
#: What ``train_net.py`` (``dyn_seg.evaluation.report_results``) writes after evaluation.
RESULTS_FILE = "eval_results.json"

# training processes now running, stopped when the sweep is interrupted
_children: set = set()
_stopping = threading.Event()


@dataclass(frozen=True)
class Point:
    """One budget setting: ``weight`` / ``mu`` are None for Dynamic-Raw."""

    weight: Optional[float] = None
    mu: Optional[float] = None

    @property
    def is_raw(self) -> bool:
        return self.weight is None

    @property
    def name(self) -> str:
        """Folder name, e.g. ``raw`` or ``lambda0.8_mu0.1``."""
        return "raw" if self.is_raw else f"lambda{self.weight:g}_mu{self.mu:g}"

    @property
    def label(self) -> str:
        """Figure label, e.g. ``Raw`` or ``λ 0.8, μ 0.1``."""
        return "Raw" if self.is_raw else f"\u03bb {self.weight:g}, \u03bc {self.mu:g}"

    def overrides(self) -> List[str]:
        if self.is_raw:
            return ["MODEL.BUDGET.CONSTRAIN", "False"]
        return [
            "MODEL.BUDGET.CONSTRAIN", "True",
            "MODEL.BUDGET.LOSS_WEIGHT", repr(self.weight),
            "MODEL.BUDGET.LOSS_MU", repr(self.mu),
        ]


def parse_point(text: str) -> Point:
    """``raw`` or ``LAMBDA:MU`` (both numbers, LAMBDA > 0, 0 <= MU <= 1)."""
    if text.strip().lower() == "raw":
        return Point()
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        weight, mu = float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"point {text!r} must be 'raw' or 'LAMBDA:MU', e.g. 0.8:0.1 (budget loss weight "
            "0.8, target share 0.1 of the all-open cell FLOPs)"
        ) from None
    if not (math.isfinite(weight) and weight > 0):
        raise argparse.ArgumentTypeError(
            f"point {text!r}: LAMBDA must be a positive number (use 'raw' for no budget)"
        )
    if not (math.isfinite(mu) and 0.0 <= mu <= 1.0):
        raise argparse.ArgumentTypeError(
            f"point {text!r}: MU is a share of the all-open cell FLOPs, between 0 and 1"
        )
    return Point(weight, mu)


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config to train")
    parser.add_argument(
        "--points", nargs="+", type=parse_point, required=True, metavar="POINT",
        help="budget settings: 'raw' and/or LAMBDA:MU pairs, e.g. raw 0.8:0.3 0.8:0.1",
    )
    parser.add_argument("--output", required=True, help="sweep folder (one subfolder per point)")
    parser.add_argument("--seed", type=int, default=0, help="SEED of every run (default 0)")
    parser.add_argument(
        "--jobs", type=int_at_least(1), default=1,
        help="runs at the same time (default 1); give each its own core: jobs x threads "
        "should not exceed the free cores",
    )
    parser.add_argument(
        "--threads", type=int, default=None,
        help="OMP_NUM_THREADS of each run (default: $OMP_NUM_THREADS, else 1)",
    )
    parser.add_argument(
        "--train-net", default=str(REPO / "train_net.py"),
        help="training script (default: train_net.py of this repository)",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[],
        help="config overrides for every point, KEY VALUE pairs",
    )
    return parser


# --------------------------------------------------------------------------- network FLOPs


def _test_size(cfg, network) -> Tuple[int, int]:
    """The size real FLOPs are counted at in evaluation: the network's counting size
    (:meth:`DynamicNetwork.counting_size`) of the first test image after the test resize
    (the images are assumed to share one size, as Cityscapes frames do)."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.transforms import ResizeShortestEdge

    if network.flops_size is not None:  # INPUT.FIX_SIZE_FOR_FLOPS: no image needed
        return network.counting_size((0, 0))
    if not cfg.DATASETS.TEST:
        raise ValueError("DATASETS.TEST is empty: the sweep evaluates every point on it.")
    name = cfg.DATASETS.TEST[0]
    try:
        records = DatasetCatalog.get(name)
    except (AssertionError, FileNotFoundError, KeyError) as e:
        raise FileNotFoundError(
            f"cannot read the test set {name!r} ({e}). Export DETECTRON2_DATASETS, e.g. "
            "export DETECTRON2_DATASETS=$(python datasets/generate_synthetic_cityscapes.py)"
        ) from e
    if not records:
        raise ValueError(f"the test set {name!r} has no images; check DETECTRON2_DATASETS.")
    size = (int(records[0]["height"]), int(records[0]["width"]))
    min_size = cfg.INPUT.MIN_SIZE_TEST
    if min_size:
        size = ResizeShortestEdge.get_output_shape(*size, min_size, cfg.INPUT.MAX_SIZE_TEST)
    return network.counting_size(size)


def network_flops(cfg) -> Dict[str, object]:
    """All-open GFLOPs of the network at the evaluation size (real, expected, stem, head,
    gates) and its all-open expected cell MFLOPs at the training crop, which is what
    ``MODEL.BUDGET.FLOPS_ALL`` should be for the budget target ``MU`` to mean a share of the
    network's own cells."""
    from detectron2.modeling import build_model

    from dyn_seg.engine.startup_checks import check_flops_all
    from dyn_seg.modeling.meta_arch.analysis import all_open_flops
    from dyn_seg.modeling.meta_arch.routed import routed_model

    cfg = cfg.clone()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    size = _test_size(cfg, routed_model(model).routed_network)
    parts = {k: v / 1000.0 for k, v in all_open_flops(model, size).items()}
    out: Dict[str, object] = {"size": list(size), "all_open_GFLOPs": parts}
    if cfg.INPUT.CROP.ENABLED:
        crop = tuple(int(s) for s in cfg.INPUT.CROP.SIZE)
        out["crop"] = list(crop)
        out["crop_all_open_expected_MFLOPs"] = all_open_flops(model, crop)["expected"]
    # the points set MODEL.BUDGET.CONSTRAIN: check FLOPS_ALL as their training will
    constrained = cfg.clone()
    constrained.MODEL.BUDGET.CONSTRAIN = True
    out["flops_all_warning"] = check_flops_all(constrained, model)
    return out


# --------------------------------------------------------------------------- running points


def _point_settings(args, point: Point, opts: Sequence[str]) -> Dict[str, object]:
    return {
        "config_file": os.path.abspath(args.config_file),
        "seed": args.seed,
        "opts": list(opts),
        "budget": point.overrides(),
    }


def _read_results(point_dir: Path) -> Optional[Dict]:
    path = point_dir / RESULTS_FILE
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def _run_point(args, point: Point, opts: Sequence[str], threads: int) -> Dict:
    """Train and evaluate one point (or continue / read it back); returns its results."""
    point_dir = Path(args.output) / point.name
    settings = _point_settings(args, point, opts)
    settings_path = point_dir / POINT_FILE
    if settings_path.exists():
        with open(settings_path) as f:
            recorded = json.load(f)
        if recorded.get("settings") != settings:
            raise RuntimeError(
                f"{point_dir} was started with other settings ({recorded.get('settings')}) "
                f"than now ({settings}). Use another --output, or delete {point_dir} to "
                "train that point again."
            )
        results = _read_results(point_dir)
        if results is not None:
            logger.info("%s: finished before, skipped", point.name)
            return {"results": results, "seconds": recorded.get("seconds")}
    point_dir.mkdir(parents=True, exist_ok=True)
    with open(settings_path, "w") as f:
        json.dump({"settings": settings}, f, indent=2)

    resume = (point_dir / "last_checkpoint").exists()
    cmd = [sys.executable, args.train_net, "--config-file", args.config_file]
    if resume:
        cmd.append("--resume")
    cmd += list(opts) + point.overrides() + [
        "SEED", str(args.seed), "OUTPUT_DIR", str(point_dir),
    ]
    # unbuffered: progress lines arrive as they are written
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    logger.info("%s: %s (log: %s)", point.name, "continuing" if resume else "training",
                point_dir / "train_net.log")
    start = time.time()
    with open(point_dir / "train_net.log", "a") as log:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            cwd=str(REPO),
        )
        _children.add(proc)
        if _stopping.is_set():  # interrupted while this one was starting
            proc.terminate()
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            # detectron2's periodic "eta: ... iter: N" lines and the final summary
            if "eta:" in line or "dyn_seg.evaluation" in line:
                logger.info("%s: %s", point.name, line.rstrip().split("]: ", 1)[-1])
        returncode = proc.wait()
        _children.discard(proc)
    seconds = time.time() - start
    results = _read_results(point_dir)
    if returncode != 0 or results is None:
        raise RuntimeError(
            f"{point.name}: train_net.py failed (exit code {returncode}); see "
            f"{point_dir / 'train_net.log'}. Running the sweep again continues from its "
            "last checkpoint."
        )
    with open(settings_path, "w") as f:
        json.dump({"settings": settings, "seconds": seconds}, f, indent=2)
    logger.info("%s: done in %.0f s", point.name, seconds)
    return {"results": results, "seconds": seconds}


def table_row(point: Point, run: Dict) -> Dict[str, object]:
    """One table row from a point's ``eval_results.json`` (task level: sem_seg, routing)."""
    results = run["results"]
    sem_seg = results.get("sem_seg", {})
    routing = results.get("routing", {})
    row: Dict[str, object] = {
        "name": point.name,
        "label": point.label,
        "lambda": point.weight,
        "mu": point.mu,
        "mIoU": sem_seg.get("mIoU"),
    }
    for key in (
        "GFLOPs_real", "GFLOPs_real_min", "GFLOPs_real_max",
        "GFLOPs_expected", "GFLOPs_expected_min", "GFLOPs_expected_max",
        "gates_open_pct",
    ):
        row[key] = routing.get(key)
    row["train_seconds"] = run.get("seconds")
    return row


# --------------------------------------------------------------------------- outputs


def _fmt(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: Sequence[Dict]) -> str:
    lines = [
        "| setting | λ | μ | mIoU | real GFLOPs mean (min–max) | expected GFLOPs mean "
        "(min–max) | gates open % |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {_fmt(r['lambda'], 2) if r['lambda'] is not None else '–'} "
            f"| {_fmt(r['mu'], 2) if r['mu'] is not None else '–'} | {_fmt(r['mIoU'], 2)} "
            f"| {_fmt(r['GFLOPs_real'], 4)} ({_fmt(r['GFLOPs_real_min'], 4)}–"
            f"{_fmt(r['GFLOPs_real_max'], 4)}) "
            f"| {_fmt(r['GFLOPs_expected'], 4)} ({_fmt(r['GFLOPs_expected_min'], 4)}–"
            f"{_fmt(r['GFLOPs_expected_max'], 4)}) | {_fmt(r['gates_open_pct'], 1)} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Dict], flops: Dict, title: str, path: Path) -> None:
    """mIoU against real GFLOPs (bars: min..max over images), all-open and fixed parts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = flops["all_open_GFLOPs"]
    fixed = parts["stem"] + parts["head"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.axvspan(0, fixed, color="0.85", label=f"stem + decoder: {fixed:.4f} (no gate removes it)")
    ax.axvline(parts["real"], color="tab:red", linestyle="--",
               label=f"all paths open: {parts['real']:.4f}")
    done = [r for r in rows if r["mIoU"] is not None and r["GFLOPs_real"] is not None]
    for r in done:
        x = r["GFLOPs_real"]
        xerr = [[x - r["GFLOPs_real_min"]], [r["GFLOPs_real_max"] - x]]
        ax.errorbar(x, r["mIoU"], xerr=xerr, fmt="o", capsize=3,
                    color="black" if r["lambda"] is None else "tab:blue")
        ax.annotate(r["label"], (x, r["mIoU"]), textcoords="offset points", xytext=(5, 6),
                    fontsize=8)
    ax.set_xlim(0, parts["real"] * 1.08)
    ax.margins(y=0.15)  # room for the labels
    ax.set_xlabel(f"real GFLOPs per image at {flops['size'][0]}x{flops['size'][1]}")
    ax.set_ylabel("mIoU")
    ax.set_title(f"{title}\n(bars: the cheapest to the costliest image)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(args, opts, points, runs, flops) -> Dict:
    rows = [table_row(p, runs[p]) for p in points if p in runs]
    out = Path(args.output)
    table = {
        "config_file": args.config_file,
        "opts": list(opts),
        "seed": args.seed,
        "flops": flops,
        "points": rows,
    }
    with open(out / TABLE_JSON, "w") as f:
        json.dump(table, f, indent=2)
    with open(out / TABLE_MD, "w") as f:
        f.write(markdown_table(rows))
    plot(rows, flops, f"{Path(args.config_file).name}: budget sweep", out / FIGURE)
    return table


def main(argv: Optional[Sequence[str]] = None, handle_sigterm: bool = False) -> Dict:
    """Run the sweep; returns the table. ``handle_sigterm``: on SIGTERM (e.g. from a job
    scheduler) stop the training processes too, as Ctrl-C does."""
    args = argument_parser().parse_args(argv)
    if handle_sigterm:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s budget_sweep] %(message)s",
                        datefmt="%H:%M:%S")
    opts = [o for o in args.opts if o != "--"]
    if len(opts) % 2:
        raise SystemExit(f"error: config overrides must be KEY VALUE pairs, got {opts}")
    for key in opts[::2]:
        if key.startswith(("MODEL.BUDGET.CONSTRAIN", "MODEL.BUDGET.LOSS_WEIGHT",
                           "MODEL.BUDGET.LOSS_MU", "OUTPUT_DIR", "SEED")):
            raise SystemExit(
                f"error: {key} is set by the sweep itself (--points, --output, --seed); "
                "leave it out of the overrides"
            )
    if not os.path.isfile(args.config_file):
        raise SystemExit(f"error: config file {args.config_file} does not exist")
    if args.jobs < 1:
        raise SystemExit("error: --jobs must be at least 1")
    points = list(dict.fromkeys(args.points))  # same setting twice: train once
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", "1") or 1)

    from dyn_seg import get_dyn_seg_cfg

    cfg = get_dyn_seg_cfg(args.config_file, opts)
    flops = network_flops(cfg)
    warning = flops.pop("flops_all_warning")
    if warning:  # MU is then not a share of this network's cells
        logger.warning("%s", warning)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    logger.info("%d points: %s; all paths open: %.4f real GFLOPs, of which stem + decoder "
                "%.4f", len(points), ", ".join(p.name for p in points),
                flops["all_open_GFLOPs"]["real"],
                flops["all_open_GFLOPs"]["stem"] + flops["all_open_GFLOPs"]["head"])

    runs: Dict[Point, Dict] = {}
    lock = threading.Lock()
    errors: List[BaseException] = []

    def work(point: Point) -> None:
        if _stopping.is_set():
            return
        try:
            run = _run_point(args, point, opts, threads)
        except BaseException as e:  # reported after the other points finished
            errors.append(e)
            logger.error("%s", e)
            return
        with lock:
            runs[point] = run
            logger.info("%d/%d points done", len(runs), len(points))
            write_outputs(args, opts, points, runs, flops)

    pool = ThreadPoolExecutor(max_workers=args.jobs)
    try:
        list(pool.map(work, points))
    except BaseException:
        _stopping.set()
        for proc in list(_children):
            proc.terminate()
        logger.error("interrupted; run the same command again to continue the sweep")
        raise
    finally:
        pool.shutdown(wait=True)
    table = write_outputs(args, opts, points, runs, flops)
    print(markdown_table(table["points"]), end="")
    if errors:
        raise SystemExit(f"error: {len(errors)} point(s) failed: {errors[0]}")
    return table


if __name__ == "__main__":
    main(handle_sigterm=True)
