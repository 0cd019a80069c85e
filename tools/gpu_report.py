#!/usr/bin/env python
"""Collect the parts of ``scripts/gpu_check.sh`` into one JSON file and a markdown table.

Reads ``OUTDIR/parts/`` (``env.json``; per part ``NAME.jsonl`` benchmark lines and
``NAME.status``) and writes ``OUTDIR/gpu_check.json`` and ``OUTDIR/gpu_check.md``: device,
torch version, every figure with its peak memory, each part's status (ok, failed, timed out,
skipped) and the targets of BENCHMARKS.md § GPU with met / missed / not measured.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

# Targets on one H100/H200 (BENCHMARKS.md § GPU).
L16_B1_MS = 10.0
L33_B1_MS = 25.0
TRAIN_IMAGES_PER_S = 70.0
TRAIN_PEAK_GB = 15.0


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


#: Float32 inference modes of the fast plan that the latency targets may be met with.
FAST_FP32_MODES = ("fast", "fast-compile", "fast-compile-graphs")
#: Pixels whose faithful top-2 logits are closer than this are float32 ties, not errors.
TIE_MARGIN = 1e-4


def _fastest(parts: Dict[str, dict], net: str) -> Optional[dict]:
    found = [r for part in (f"infer_{net}_b1_open", f"infer_{net}_b1_compile")
             for mode in FAST_FP32_MODES if (r := _find(parts, part, mode)) is not None]
    return min(found, key=lambda r: r["median_ms"]) if found else None


def _argmax_equal(r: dict) -> bool:
    return (r["argmax_differing_pixels"] == 0
            or r.get("argmax_differing_max_margin", float("inf")) <= TIE_MARGIN)


def targets(parts: Dict[str, dict]) -> List[dict]:
    rows = []
    for net, bound in (("L16", L16_B1_MS), ("L33", L33_B1_MS)):
        best = _fastest(parts, net)
        # argmax equality is judged without TF32 where that part ran (TF32 rounds the
        # faithful and the folded convolutions differently)
        strict = _find(parts, f"infer_{net}_b1_open_notf32", "fast")
        check = strict or _find(parts, f"infer_{net}_b1_open", "fast")
        ok = measured = None
        if best is not None and check is not None:
            ok = best["median_ms"] <= bound and _argmax_equal(check)
            measured = (f"{best['median_ms']:.1f} ms ({best['mode']}); "
                        f"{check['argmax_differing_pixels']} pixels differ "
                        f"(TF32 {'off' if strict else 'on'}, largest top-2 margin "
                        f"{check.get('argmax_differing_max_margin', float('nan')):.2g})")
        rows.append({"target": f"{net} 1024x2048 batch 1, fast, <= {bound:g} ms, argmax equal",
                     "measured": measured, "verdict": _verdict(ok)})
    t = _find(parts, "train_L16", "channels_last-bf16", task="train")
    ok = None
    if t is not None:
        peak_gb = t.get("peak_memory_mb", float("inf")) / 1024
        ok = t["images_per_s"] >= TRAIN_IMAGES_PER_S and peak_gb <= TRAIN_PEAK_GB
    rows.append({"target": f"L16 train 768x768 batch 8 >= {TRAIN_IMAGES_PER_S:g} img/s at "
                           f"<= {TRAIN_PEAK_GB:g} GB",
                 "measured": None if t is None else
                 f"{t['images_per_s']:.1f} img/s, {t.get('peak_memory_mb', 0) / 1024:.1f} GB",
                 "verdict": _verdict(ok)})
    for net in ("L16", "L33"):
        open_, shut = (_find(parts, f"infer_{net}_b1_{g}", "fast") for g in ("open", "cells0.5"))
        ok = measured = None
        if open_ is not None and shut is not None:
            share = shut["real_gflops"] / shut["all_open_real_gflops"]
            bound = 0.3 + 0.7 * share
            ratio = shut["median_ms"] / open_["median_ms"]
            ok, measured = ratio <= bound, f"{ratio:.2f} of all-open latency (bound {bound:.2f})"
        rows.append({"target": f"{net} latency with cells:0.5 <= 0.3 + 0.7 x real/all-open",
                     "measured": measured, "verdict": _verdict(ok)})
    return rows


def markdown(env: dict, parts: Dict[str, dict], rows: List[dict], elapsed: int) -> str:
    lines = [f"# GPU check: {env.get('device', '?')}", "",
             f"torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}, "
             f"Python {env.get('python', '?')}; {elapsed} s in all.", "",
             "| part | status |", "|---|---|"]
    lines += [f"| {name} | {p['status']} |" for name, p in parts.items()]
    lines += ["", "| part | task | mode | size | batch | gates | median ms | images/s | "
              "real GFLOPs | shut share | speed-up | argmax agreement | peak MB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in parts.items():
        gates = next((r.get("gates") for r in p["records"] if r.get("task") == "setup"), "")
        for r in p["records"]:
            if r.get("task") not in ("inference", "train"):
                continue
            peak = r.get("peak_memory_mb", r.get("process_peak_rss_mb"))

            def f(key, fmt, r=r):
                return format(r[key], fmt) if r.get(key) is not None else ""

            lines.append(
                f"| {name} | {r['task']} | {r['mode']} | {'x'.join(map(str, r['size']))} | "
                f"{r['batch']} | {gates} | {f('median_ms', '.1f')} | "
                f"{f('images_per_s', '.1f')} | {f('real_gflops', '.4g')} | "
                f"{f('shut_real_flops_share', '.2f')} | {f('speedup_vs_faithful', '.2f')} | "
                f"{f('argmax_agreement', '.5f')} | "
                f"{'' if peak is None else format(peak, '.0f')} |")
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {r['target']} | {r['measured'] or '-'} | {r['verdict']} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", type=Path)
    p.add_argument("--elapsed", type=int, default=0, help="seconds the check took")
    args = p.parse_args(argv)
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
