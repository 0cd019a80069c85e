"""Run an exported model: ``.onnx`` in ONNX Runtime (CPU provider), ``.pt2`` / ``.ts`` with
plain torch (no dyn_seg model code runs).

Prints one JSON line per image: real GFLOPs from the gates the graph returns, how many of
the routed paths were open, and the predicted classes. Images are resized to the export
size (``model.json``); without ``--input`` generated street scenes are used.

Examples::

    python tools/deploy/run_exported.py --model output/export/tiny/model.onnx --generate 3
    python tools/deploy/run_exported.py --model DIR/model.pt2 --input frames/ --output labels/
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from dyn_seg.export.runtime import load_exported, prepare_image, summarize
from dyn_seg.utils.cli import find_images, output_paths


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported .onnx, .pt2 or .ts file")
    p.add_argument("--input", nargs="*", default=[],
                   help="image files, folders or glob patterns")
    p.add_argument("--generate", type=int, default=1, metavar="N",
                   help="without --input: N generated street scenes (default 1)")
    p.add_argument("--output", default="", metavar="DIR",
                   help="write each image's label map (PNG of class indices) here")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    runner = load_exported(args.model)
    size = runner.input_size
    if args.input:
        found = find_images(args.input)
        names = [rel for _, rel in found]
        images = [prepare_image(path, size) for path, _ in found]
    else:
        names = [f"generated-{k}" for k in range(args.generate)]
        images = [prepare_image(None, size, seed=k) for k in range(args.generate)]
    targets = output_paths(names, args.output) if args.output and args.input else None
    for k, (name, image) in enumerate(zip(names, images)):
        outputs = runner(image[None])
        row = summarize(outputs, runner.metadata["gate_columns"])[0]
        row["image"] = name
        if args.output:
            import cv2

            path = targets[k] if targets else os.path.join(args.output, f"{name}.png")
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            cv2.imwrite(path, outputs["sem_seg"][0].argmax(axis=0).astype("uint8"))
            row["output"] = path
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
