"""What every command-line tool does the same way.

* one list of image extensions (:data:`IMAGE_EXTENSIONS`) and one input search
  (:func:`find_images`) that also says where each image's output goes, mirroring the
  inputs' relative paths;
* one way to give a size: ``--size H W`` or ``--size HxW`` (:func:`add_size_argument`);
* one flag for weights, ``--weights FILE``, and detectron2's trailing ``KEY VALUE`` config
  overrides (``opts``; ``--opts KEY VALUE ...`` is accepted as well)
  (:func:`add_weights_and_opts`, :func:`parse_tool_args`);
* a ``DefaultPredictor`` whose weights are loaded by ``DynSegCheckpointer``
  (:func:`build_predictor`);
* a parser whose help is the program's docstring, its ``Examples::`` section as the
  epilog (:func:`docstring_parser`);
* one ``--root`` for the dataset programs, defaulting to ``$DETECTRON2_DATASETS``
  (:func:`add_dataset_root`);
* argparse ``type=`` checks of numbers, whose messages name the allowed range
  (:func:`int_at_least`, :func:`float_in`).
"""
from __future__ import annotations

import argparse
import glob
import os
import re
from typing import List, Optional, Sequence, Tuple

__all__ = [
    "IMAGE_EXTENSIONS",
    "add_dataset_root",
    "add_size_argument",
    "add_weights_and_opts",
    "docstring_parser",
    "build_predictor",
    "find_images",
    "float_in",
    "int_at_least",
    "output_paths",
    "parse_size",
    "parse_tool_args",
]

#: Extensions searched for in input folders (lower case; matched case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# --------------------------------------------------------------------------- numbers

def int_at_least(minimum: int, meaning: str = ""):
    """An argparse ``type=``: an integer >= ``minimum``; ``meaning`` (e.g. "0: keep")
    is added to the message. ``parser.error`` reports ``argument --iters: ...``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            note = f" ({meaning})" if meaning else ""
            raise argparse.ArgumentTypeError(f"{value} is not allowed: it must be an integer "
                                             f">= {minimum}{note}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def float_in(low: float, high: float, low_open: bool = False):
    """An argparse ``type=``: a number in ``[low, high]`` (``(low, high]`` with
    ``low_open``)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (low < value if low_open else low <= value) or not value <= high:
            raise argparse.ArgumentTypeError(f"{value:g} is not allowed: it must be in "
                                             f"{interval}")
        return value

    parse.__name__ = f"number in {interval}"
    return parse


# ----------------------------------------------------------------------------- sizes

def parse_size(value: Sequence[str] | str, minimum: int = 1) -> Tuple[int, int]:
    """``"HxW"``, ``"H W"``, ``["H", "W"]`` or ``["HxW"]`` -> ``(H, W)``; ValueError otherwise
    (also when a side is below ``minimum`` pixels)."""
    text = " ".join(value) if not isinstance(value, str) else value
    parts = [p for p in re.split(r"[x×,\s]+", text.strip().lower()) if p]
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"size {text!r} is not understood: give the height and width in pixels as "
            "'H W' or 'HxW', e.g. --size 1024 2048 or --size 1024x2048"
        ) from None
    if height < minimum or width < minimum:
        raise ValueError(f"size {text!r}: height and width must be at least {minimum} pixels")
    return height, width


class _SizeAction(argparse.Action):
    minimum = 1

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, parse_size(values, self.minimum))
        except ValueError as e:
            parser.error(f"{option_string}: {e}")


def add_size_argument(parser: argparse.ArgumentParser, *flags: str,
                      default: Tuple[int, int] = (1024, 2048), help: str = "input size",
                      minimum: int = 1) -> None:
    """``--size H W`` or ``--size HxW`` (``flags`` default to ``--size``); the parsed value is
    an ``(H, W)`` tuple, each side at least ``minimum`` pixels."""
    flags = flags or ("--size",)
    action = type("SizeAction", (_SizeAction,), {"minimum": minimum})
    # one value ("HxW"); parse_tool_args joins "H W" into it, so that trailing KEY VALUE
    # overrides after --size are never taken for a third number
    parser.__dict__.setdefault("size_flags", []).extend(flags)
    parser.add_argument(*flags, action=action, default=tuple(default),
                        metavar="H W|HxW",
                        help=f"{help}: height and width as 'H W' or 'HxW' "
                             f"(default {default[0]}x{default[1]})")


# ----------------------------------------------------------------------------- weights

def add_weights_and_opts(parser: argparse.ArgumentParser, weights_help: str) -> None:
    """``--weights FILE`` and detectron2's trailing ``KEY VALUE`` config overrides."""
    parser.add_argument("--weights", default="", metavar="FILE", help=weights_help)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                        help="config overrides at the end of the command line, as for "
                             "train_net.py, e.g. MODEL.DEVICE cpu INPUT.MIN_SIZE_TEST 512 "
                             "(also accepted after --opts)")


def parse_tool_args(parser: argparse.ArgumentParser,
                    argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """``parser.parse_args`` that also takes ``--opts KEY VALUE ...`` (the older spelling) as
    the trailing overrides, and turns a ``MODEL.WEIGHTS`` override into ``--weights``."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    for flag in getattr(parser, "size_flags", ()):
        if flag in argv:
            i = argv.index(flag)
            pair = argv[i + 1:i + 3]
            if len(pair) == 2 and all(v.isdigit() for v in pair):
                argv[i + 1:i + 3] = [f"{pair[0]}x{pair[1]}"]
    trailing: List[str] = []
    if "--opts" in argv:  # everything after it is overrides, even after a nargs="+" option
        i = argv.index("--opts")
        argv, trailing = argv[:i], argv[i + 1:]
    args = parser.parse_args(argv)
    opts = list(getattr(args, "opts", None) or []) + trailing
    if len(opts) % 2:
        parser.error(f"config overrides come in KEY VALUE pairs; got an odd number: {opts}")
    if "MODEL.WEIGHTS" in opts[::2] and hasattr(args, "weights"):
        i = opts[::2].index("MODEL.WEIGHTS") * 2
        if args.weights and args.weights != opts[i + 1]:
            parser.error(f"--weights {args.weights} and MODEL.WEIGHTS {opts[i + 1]} disagree; "
                         "give the weights once")
        args.weights = opts[i + 1]
        del opts[i:i + 2]
    args.opts = opts
    return args


def build_predictor(cfg, weights: str, *, allow_unsafe_pickle: bool = False,
                    allow_partial_weights: bool = False, require_weights: bool = True):
    """:class:`~dyn_seg.engine.predictor.DynSegPredictor` for ``cfg`` with ``weights``
    (safe loading, reference names converted, missing parameters an error unless
    ``allow_partial_weights``).

    With ``require_weights`` an empty ``weights`` is an error; otherwise the model keeps
    its random initialisation (on purpose, e.g. to look at an untrained network's routes).
    """
    from ..engine.predictor import DynSegPredictor

    if require_weights and not weights:
        raise ValueError("no weights given: pass the trained model, e.g. "
                         "--weights output/main_job/train/model_final.pth")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    return DynSegPredictor(cfg, allow_unsafe_pickle=allow_unsafe_pickle,
                           allow_partial_weights=allow_partial_weights or not weights)


# ----------------------------------------------------------------------------- inputs

def _search_root(pattern: str) -> str:
    """The folder that a file, folder or glob pattern's relative paths start from."""
    if os.path.isdir(pattern):
        return pattern
    if not glob.has_magic(pattern):
        return os.path.dirname(pattern) or "."
    parts = []
    for part in pattern.split(os.sep):
        if glob.has_magic(part):
            break
        parts.append(part)
    return os.sep.join(parts) or ("." if not pattern.startswith(os.sep) else os.sep)


def find_images(patterns: Sequence[str]) -> List[Tuple[str, str]]:
    """Images of files, folders (searched recursively for :data:`IMAGE_EXTENSIONS`) and glob
    patterns (``**`` recursive), as ``(path, relative path)`` pairs.

    The relative paths start at the common folder of all inputs, so that ``a/x.png`` and
    ``b/x.png`` stay apart; a path found twice is listed once. Raises FileNotFoundError
    naming an input that matches no image.
    """
    found: List[Tuple[str, str]] = []  # (path, search root)
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern):
            paths = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(pattern)
                for name in names
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
        else:
            paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not paths:
            raise FileNotFoundError(
                f"--input {pattern!r} matches no image file (folders are searched for "
                f"{', '.join(IMAGE_EXTENSIONS)}; quote glob patterns)."
            )
        root = os.path.abspath(_search_root(pattern))
        found.extend((p, root) for p in paths)
    roots = {root for _, root in found}
    common = os.path.commonpath(sorted(roots)) if len(roots) > 1 else roots.pop()
    result, seen = [], set()
    for path, _ in found:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            result.append((path, os.path.relpath(key, common)))
    return result


def output_paths(relative: Sequence[str], output_dir: str, suffix: str = ".png",
                 rename=None) -> List[str]:
    """One output file per input, mirroring the inputs' relative paths under ``output_dir``.

    ``a/x.png`` -> ``OUT/a/x{suffix}``; ``rename`` (optional) maps the stem first. Inputs
    that differ only by extension (``a/x.png``, ``a/x.jpg``) keep it in the name
    (``a/x.png{suffix}``, ``a/x.jpg{suffix}``), so no output overwrites another.
    """
    def name(rel: str, keep_ext: bool) -> str:
        stem, ext = os.path.splitext(rel)
        stem = rename(stem) if rename else stem
        return stem + (ext if keep_ext else "") + suffix

    plain = [name(r, False) for r in relative]
    counts: dict = {}
    for p in plain:
        counts[p] = counts.get(p, 0) + 1
    names = [name(r, True) if counts[p] > 1 else p for r, p in zip(relative, plain)]
    if len(set(names)) != len(names):  # e.g. "x.png.png" next to "x.png" and "x.jpg"
        names = [f"{os.path.splitext(n)[0]}_{i:05d}{suffix}" for i, n in enumerate(names)]
    return [os.path.join(output_dir, n) for n in names]


# --------------------------------------------------------------------------- dataset root

def add_dataset_root(parser: argparse.ArgumentParser, default: str, holds: str) -> None:
    """``--root``: the folder detectron2 reads datasets from (``$DETECTRON2_DATASETS``, else
    ``default``); ``holds`` says what the program reads or writes under it."""
    parser.add_argument(
        "--root", default=os.environ.get("DETECTRON2_DATASETS", default),
        help=f"dataset root {holds} (default: $DETECTRON2_DATASETS, else {default})",
    )


# --------------------------------------------------------------------------- help text

def docstring_parser(doc: str, plain_literals: bool = False) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` described by a program's docstring ``doc`` as written: the part
    before ``Examples::`` is the description, the rest the epilog ("examples:"), line
    breaks kept. ``plain_literals``: drop the reST double backquotes from the description."""
    description, examples = doc.split("Examples::", 1)
    description = description.strip()
    if plain_literals:
        description = description.replace("``", "")
    return argparse.ArgumentParser(description=description, epilog="examples:" + examples,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
