"""Collect the parts of ``scripts/gpu_check.sh`` into one JSON file and a markdown table.

Reads ``OUTDIR/parts/`` (``env.json``; per part ``NAME.jsonl`` benchmark lines and
``NAME.status``) and writes ``OUTDIR/gpu_check.json`` and ``OUTDIR/gpu_check.md``: device,
torch version, whether CUDA-graph conditional nodes can be captured, every figure with its
peak memory, operator and host-read counts, the profile summary, each part's status (ok,
failed, timed out, skipped), modes this version could not run, and the targets of issue 19
(BENCHMARKS.md § GPU) with met / missed / not measured.

``python tools/gpu_report.py --env [DEVICE]`` prints the environment record instead
(torch, CUDA, device, Python, conditional-node capture, the benchmark modes this version
can run on DEVICE): what the check writes to ``parts/env.json``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
from pathlib import Path
from typing import Dict, List, Optional

# Targets on one H100/H200 (issue 19; BENCHMARKS.md § GPU).
L16_B1_MS = 5.0
L33_B1_MS = 10.0
TRAIN_IMAGES_PER_S = 100.0
TRAIN_PEAK_GB = 12.0
#: shut-latency bound: latency(cells:0.5) / latency(open) <= SHUT_FIXED + SHUT_SLOPE * share
SHUT_FIXED, SHUT_SLOPE = 0.3, 0.7

#: Float32 inference modes the latency targets may be met with (TF32 on or off).
FP32_MODES = ("fast", "fast-compile", "fast-compile-graphs", "graph-dense", "graph-conditional",
              "graph-dense-compile", "graph-conditional-compile", "graph-dense-cudagraph",
              "graph-conditional-cudagraph")
#: Modes that skip closed paths (the shut-latency bound is judged on these).
SKIPPING_MODES = ("fast", "graph-conditional", "graph-conditional-compile",
                  "graph-conditional-cudagraph")
#: Pixels whose faithful top-2 logits are closer than this are float32 ties, not errors.
TIE_MARGIN = 1e-4


def environment(device: str = "cuda") -> dict:
    """torch / CUDA / device / Python, CUDA-graph conditional-node capture and the modes
    this version can run on ``device``."""
    import torch

    from dyn_seg.benchmark.harness import device_name
    from dyn_seg.benchmark.modes import available

    cuda = torch.cuda.is_available()
    has_module = importlib.util.find_spec(
        "torch._higher_order_ops.cudagraph_conditional_nodes") is not None
    env = {
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "device": device_name(torch.device("cuda" if cuda else "cpu")),
        "python": platform.python_version(),
        "conditional_nodes": {
            "CUDAGraph.begin_capture_to_if_node": hasattr(torch.cuda.CUDAGraph,
                                                          "begin_capture_to_if_node"),
            "torch._higher_order_ops.cudagraph_conditional_nodes": has_module,
        },
    }
    for kind in ("inference", "train"):
        ok, missing = available(kind, device=device if cuda else "cpu")
        env[f"{kind}_modes"] = ok
        env[f"{kind}_modes_unavailable"] = missing
    return env


def read_parts(out: Path) -> Dict[str, dict]:
    parts = {}
    for status in sorted((out / "parts").glob("*.status")):
        name = status.stem
        lines = out / "parts" / f"{name}.jsonl"
        records = []
        if lines.exists():
            for line in lines.read_text().splitlines():
                line = line.strip()
                if line.startswith("{"):
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
        parts[name] = {"status": status.read_text().strip(), "records": records}
    return parts


def _find(parts: Dict[str, dict], part: str, mode: str, task: str = "inference"
          ) -> Optional[dict]:
    for r in parts.get(part, {}).get("records", []):
        if r.get("task") == task and r.get("mode") == mode:
            return r
    return None


def _verdict(ok: Optional[bool]) -> str:
    return "not measured" if ok is None else ("met" if ok else "missed")


def _eager_variant(mode: str) -> str:
    """The eager mode of the same plan (argmax is checked on it when the compiled or
    captured mode was not run with TF32 off)."""
    for suffix in ("-compile", "-cudagraph", "-compile-graphs"):
        if mode.endswith(suffix):
            return mode[: -len(suffix)]
    return mode


def _fastest(parts: Dict[str, dict], net: str) -> Optional[dict]:
    found = [dict(r, part=part) for part in (f"infer_{net}_b1_open", f"infer_{net}_b1_compile",
                                             f"infer_{net}_b1_open_notf32")
             for mode in FP32_MODES if (r := _find(parts, part, mode)) is not None]
    return min(found, key=lambda r: r["median_ms"]) if found else None


def _argmax_equal(r: dict) -> bool:
    return (r["argmax_differing_pixels"] == 0
            or r.get("argmax_differing_max_margin", float("inf")) <= TIE_MARGIN)


def _latency_rows(parts: Dict[str, dict]) -> List[dict]:
    rows = []
    for net, bound in (("L16", L16_B1_MS), ("L33", L33_B1_MS)):
        best = _fastest(parts, net)
        ok = measured = None
        if best is not None:
            strict_part = f"infer_{net}_b1_open_notf32"
            checked = best["mode"]
            check = _find(parts, strict_part, checked)
            if check is None:
                checked = _eager_variant(best["mode"])
                check = _find(parts, strict_part, checked)
            tf32 = "off"
            if check is None:  # no TF32-off record of this plan: TF32 on, said so
                checked, check, tf32 = best["mode"], best, "on"
            if best["median_ms"] > bound:
                ok = False
            else:  # fast enough: equal argmax decides, and is unjudged with TF32 on only
                ok = _argmax_equal(check) if tf32 == "off" else None
            measured = (f"{best['median_ms']:.2f} ms ({best['mode']}, {best['part']}); "
                        f"argmax of {checked}: {check['argmax_differing_pixels']} pixels "
                        f"differ (TF32 {tf32}, largest top-2 margin "
                        f"{check.get('argmax_differing_max_margin', float('nan')):.2g})")
        rows.append({"target": f"{net} 1024x2048 batch 1, float32, <= {bound:g} ms, argmax "
                               "equal to faithful (TF32 off)",
                     "measured": measured, "verdict": _verdict(ok)})
    return rows


def _shut_rows(parts: Dict[str, dict]) -> List[dict]:
    rows = []
    for net in ("L16", "L33"):
        judged = False
        for mode in SKIPPING_MODES:
            open_, shut = (_find(parts, f"infer_{net}_b1_{g}", mode) for g in ("open", "cells0.5"))
            if open_ is None or shut is None:
                continue
            judged = True
            share = shut["real_gflops"] / shut["all_open_real_gflops"]
            bound = SHUT_FIXED + SHUT_SLOPE * share
            ratio = shut["median_ms"] / open_["median_ms"]
            rows.append({"target": f"{net} {mode}: latency with cells:0.5 <= {SHUT_FIXED:g} + "
                                   f"{SHUT_SLOPE:g} x real/all-open of the all-open latency",
                         "measured": f"{ratio:.2f} ({shut['median_ms']:.2f} / "
                                     f"{open_['median_ms']:.2f} ms; bound {bound:.2f} at "
                                     f"{1 - share:.0%} of real FLOPs shut)",
                         "verdict": _verdict(ratio <= bound)})
        if not judged:
            rows.append({"target": f"{net}: latency with cells:0.5 <= {SHUT_FIXED:g} + "
                                   f"{SHUT_SLOPE:g} x real/all-open", "measured": None,
                         "verdict": _verdict(None)})
    return rows


def _training_row(parts: Dict[str, dict]) -> dict:
    found = [r for name, p in parts.items() if name.startswith("train_")
             for r in p["records"] if r.get("task") == "train"]
    target = (f"L16 train 768x768 batch 8 >= {TRAIN_IMAGES_PER_S:g} img/s at <= "
              f"{TRAIN_PEAK_GB:g} GB")
    if not found:
        return {"target": target, "measured": None, "verdict": _verdict(None)}

    def gb(r):  # CUDA allocator peak; on a CPU (a smoke run) the tensor peak
        return r.get("peak_memory_mb", r.get("tensor_peak_mb", float("inf"))) / 1024

    fitting = [r for r in found if gb(r) <= TRAIN_PEAK_GB]
    best = max(fitting or found, key=lambda r: r["images_per_s"])
    ok = best["images_per_s"] >= TRAIN_IMAGES_PER_S and gb(best) <= TRAIN_PEAK_GB
    return {"target": target, "verdict": _verdict(ok),
            "measured": f"{best['images_per_s']:.1f} img/s at {gb(best):.1f} GB "
                        f"({best['mode']}; best{' within the memory bound' if fitting else ''})"}


def targets(parts: Dict[str, dict]) -> List[dict]:
    return _latency_rows(parts) + [_training_row(parts)] + _shut_rows(parts)


def _fmt(r: dict, key: str, fmt: str) -> str:
    return format(r[key], fmt) if r.get(key) is not None else ""


def _measurement_table(parts: Dict[str, dict]) -> List[str]:
    lines = ["| part | task | mode | size | batch | gates | median ms | images/s | "
             "real GFLOPs | shut share | speed-up | argmax agreement | first call s | "
             "peak MB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in parts.items():
        gates = next((r.get("gates") for r in p["records"] if r.get("task") == "setup"), "")
        for r in p["records"]:
            if r.get("task") not in ("inference", "train"):
                continue
            peak = r.get("peak_memory_mb", r.get("tensor_peak_mb"))
            lines.append(
                f"| {name} | {r['task']} | {r['mode']} | {'x'.join(map(str, r['size']))} | "
                f"{r['batch']} | {gates} | {_fmt(r, 'median_ms', '.2f')} | "
                f"{_fmt(r, 'images_per_s', '.1f')} | {_fmt(r, 'real_gflops', '.4g')} | "
                f"{_fmt(r, 'shut_real_flops_share', '.2f')} | "
                f"{_fmt(r, 'speedup_vs_faithful', '.2f')} | "
                f"{_fmt(r, 'argmax_agreement', '.5f')} | {_fmt(r, 'first_call_s', '.1f')} | "
                f"{'' if peak is None else format(peak, '.0f')} |")
    return lines


def _count_table(parts: Dict[str, dict]) -> List[str]:
    rows = [(name, r) for name, p in parts.items() for r in p["records"]
            if r.get("task") == "count"]
    if not rows:
        return []
    lines = ["", "Operators and host reads per forward (inference) or forward + backward "
                 "(train):", "",
             "| part | pass | mode | kernels | host reads | counted by | CUDA launches | "
             "CUDA graph launches | CUDA syncs |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['pass']} | {r['mode']} | {r['kernels']} | "
                     f"{r['host_reads']} | {r.get('count_method', '')} | "
                     f"{r.get('cuda_kernel_launches', '')} | {r.get('cuda_graph_launches', '')} "
                     f"| {r.get('cuda_syncs', '')} |")
    return lines


def _profile_table(parts: Dict[str, dict]) -> List[str]:
    rows = [(name, r) for name, p in parts.items() for r in p["records"]
            if r.get("task") == "profile"]
    if not rows:
        return []
    lines = ["", "Profile (torch.profiler, per call):", "",
             "| part | mode | wall ms | device ms | device busy | top kernels (ms) |",
             "|---|---|---|---|---|---|"]
    for name, r in rows:
        top = "; ".join(f"{k['name']} {k['ms_per_call']:.2f}" for k in r["top_kernels"][:4])
        busy = r.get("device_busy_share")
        lines.append(f"| {name} | {r['mode']} | {r['wall_ms_per_call']:.2f} | "
                     f"{_fmt(r, 'device_ms_per_call', '.2f')} | "
                     f"{'' if busy is None else format(busy, '.0%')} | {top} |")
    return lines


def _unavailable(parts: Dict[str, dict]) -> List[str]:
    seen: Dict[str, str] = {}
    for p in parts.values():
        for r in p["records"]:
            if r.get("task") == "setup":
                seen.update(r.get("unavailable_modes") or {})
    if not seen:
        return []
    return ["", "Modes not run (this version or device cannot):", ""] + [
        f"- `{name}`: {why}" for name, why in sorted(seen.items())]


def markdown(env: dict, parts: Dict[str, dict], rows: List[dict], elapsed: int) -> str:
    cond = env.get("conditional_nodes") or {}
    lines = [f"# GPU check: {env.get('device', '?')}", "",
             f"torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}, "
             f"Python {env.get('python', '?')}; {elapsed} s in all.", ""]
    if cond:
        lines += ["CUDA-graph conditional-node capture: " + ", ".join(
            f"`{k}` {'yes' if v else 'no'}" for k, v in cond.items()), ""]
    lines += ["| part | status |", "|---|---|"]
    lines += [f"| {name} | {p['status']} |" for name, p in parts.items()]
    lines += [""] + _measurement_table(parts) + _count_table(parts) + _profile_table(parts)
    lines += _unavailable(parts)
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {r['target']} | {r['measured'] or '-'} | {r['verdict']} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", type=Path, nargs="?")
    p.add_argument("--elapsed", type=int, default=0, help="seconds the check took")
    p.add_argument("--env", nargs="?", const="cuda", metavar="DEVICE",
                   help="print the environment record (for parts/env.json) and exit")
    args = p.parse_args(argv)
    if args.env:
        env = environment(args.env)
        print(json.dumps(env))
        return env
    if args.outdir is None:
        p.error("give OUTDIR (the folder gpu_check.sh wrote parts/ into), or --env")
    if not (args.outdir / "parts").is_dir():
        p.error(f"{args.outdir / 'parts'} is not a folder: OUTDIR must be the folder "
                "scripts/gpu_check.sh wrote into")
    env_file = args.outdir / "parts" / "env.json"
    env = json.loads(env_file.read_text()) if env_file.exists() else {}
    parts = read_parts(args.outdir)
    rows = targets(parts)
    report = {"env": env, "elapsed_s": args.elapsed, "parts": parts, "targets": rows}
    (args.outdir / "gpu_check.json").write_text(json.dumps(report, indent=1))
    md = markdown(env, parts, rows, args.elapsed)
    (args.outdir / "gpu_check.md").write_text(md)
    print(md)
    return report


if __name__ == "__main__":
    main()
