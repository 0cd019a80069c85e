#!/usr/bin/env bash
# Install dyn_seg and everything it needs into a virtualenv.
#
# Order: torch + torchvision, then detectron2, then the rest of the stack and dyn_seg itself
# (editable, with the test and deploy extras). Each step is skipped when already satisfied, so a
# second run takes a few seconds.
#
# Environment variables:
#   DYN_SEG_VENV             virtualenv to use or create (default: the active one, else .venv
#                            at the repository root; relative paths start at the root)
#   PYTHON                   interpreter that creates the virtualenv (default: python3)
#   DYN_SEG_TORCH_SPEC       pip arguments for torch and torchvision, used only when they do
#                            not import yet (default: "torch==2.14.1 torchvision==0.29.1"),
#                            e.g. "torch torchvision --index-url https://download.pytorch.org/whl/cpu"
#   DYN_SEG_DETECTRON2_SPEC  pip requirement for detectron2, used only when it is not
#                            installed yet, e.g. "git+https://github.com/facebookresearch/detectron2.git"
#                            (default: the sal-detectron2 0.7.2 wheel from PyPI, see below)
#   DYN_SEG_FORCE_INSTALL=1  reinstall dyn_seg and its dependencies even if up to date
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$REPO_ROOT"

DEFAULT_TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
UPSTREAM_DETECTRON2="git+https://github.com/facebookresearch/detectron2.git"
SAL_VERSION="0.7.2"

log() { printf '[install] %s\n' "$*" >&2; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

start_s=$SECONDS

# --- virtualenv ------------------------------------------------------------------------
PY="$VENV/bin/python"
if [[ -x "$PY" ]]; then
    log "using virtualenv $VENV"
else
    base_python="${PYTHON:-python3}"
    command -v "$base_python" >/dev/null 2>&1 \
        || die "'$base_python' not found; install Python >= 3.9 or set PYTHON=/path/to/python3"
    "$base_python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
        || die "$("$base_python" -V 2>&1) is too old: dyn_seg needs Python >= 3.9 (set PYTHON)"
    log "creating virtualenv $VENV with $("$base_python" -V 2>&1)"
    "$base_python" -m venv "$VENV" \
        || die "could not create $VENV; on Debian/Ubuntu install the python3-venv package"
fi
pip_install() { "$PY" -m pip install --progress-bar off "$@"; }

# Editable installs from pyproject.toml need pip >= 21.3.
if ! "$PY" -c 'import sys, pip; sys.exit(tuple(map(int, pip.__version__.split(".")[:2])) < (21, 3))'
then
    log "upgrading pip"
    pip_install --upgrade pip
fi

# --- torch + torchvision ---------------------------------------------------------------
if "$PY" -c 'import torch, torchvision' 2>/dev/null; then
    log "torch and torchvision already installed"
else
    read -r -a torch_args <<< "${DYN_SEG_TORCH_SPEC:-$DEFAULT_TORCH_SPEC}"
    log "installing ${torch_args[*]}"
    # numpy<2.4 here too, so that torchvision does not pull a numpy the next step replaces.
    pip_install "${torch_args[@]}" "numpy<2.4"
fi

# --- detectron2 ------------------------------------------------------------------------
detectron2_help() {
    cat >&2 <<MSG
[install] detectron2 could not be installed. Install it yourself into $VENV, then rerun
[install] this script (an installed detectron2 is kept). With access to GitHub:
[install]     $PY -m pip install --no-build-isolation '$UPSTREAM_DETECTRON2'
[install] or set DYN_SEG_DETECTRON2_SPEC='$UPSTREAM_DETECTRON2' and rerun.
MSG
}

# sal-detectron2 on PyPI repackages upstream detectron2 (late-2024 main). Its only wheel is
# tagged cp310, but its Python code is generic and the compiled _C extension is optional
# for semantic segmentation, so the wheel is fetched for 3.10, retagged py3 and installed
# without its declared dependencies (it asks for numpy<2 and black, neither needed).
install_sal_detectron2() {
    local tmp wheel retagged
    tmp="$(mktemp -d)"
    retagged="$tmp/sal_detectron2-$SAL_VERSION-py3-none-any.whl"
    if "$PY" -m pip download --progress-bar off --no-deps --only-binary=:all: \
            --python-version 3.10 -d "$tmp" "sal-detectron2==$SAL_VERSION"; then
        wheel="$(find "$tmp" -maxdepth 1 -name "sal_detectron2-$SAL_VERSION-*.whl" | head -n 1)"
        if [[ -n "$wheel" ]]; then
            [[ "$wheel" == "$retagged" ]] || cp "$wheel" "$retagged"
            if pip_install --no-deps "$retagged"; then
                rm -rf "$tmp"
                return 0
            fi
        fi
    fi
    rm -rf "$tmp"
    return 1
}

if "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("detectron2") is None)'
then
    log "detectron2 already installed"
elif [[ -n "${DYN_SEG_DETECTRON2_SPEC:-}" ]]; then
    log "installing detectron2 from $DYN_SEG_DETECTRON2_SPEC"
    # Building upstream detectron2 imports torch, hence no build isolation.
    pip_install setuptools wheel
    pip_install --no-build-isolation "$DYN_SEG_DETECTRON2_SPEC" || { detectron2_help; exit 1; }
else
    log "installing detectron2 (sal-detectron2==$SAL_VERSION wheel from PyPI)"
    install_sal_detectron2 || { detectron2_help; exit 1; }
fi

# --- dyn_seg and the rest of the stack -------------------------------------------------
# The stamp records what the last editable install was made from; when it matches and
# dyn_seg still resolves to this checkout, pip is not run again.
stamp_file="$VENV/.dyn_seg-install-stamp"
stamp="$(cat setup.py pyproject.toml | "$PY" -c \
    'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())') $REPO_ROOT"
installed_root="$(cd / && "$PY" -c '
import importlib.util, os
spec = importlib.util.find_spec("dyn_seg")
print(os.path.dirname(os.path.dirname(os.path.realpath(spec.origin))) if spec else "")
' 2>/dev/null || true)"

if [[ "${DYN_SEG_FORCE_INSTALL:-0}" != 1 && -f "$stamp_file" \
      && "$(cat "$stamp_file")" == "$stamp" && "$installed_root" == "$REPO_ROOT" ]]; then
    log "dyn_seg already installed (editable) from $REPO_ROOT"
else
    log "installing dyn_seg (editable) with its dependencies, test tools and export tools"
    log "(pip may warn that sal-detectron2 wants numpy<2 and black: neither is needed)"
    # deploy: onnx, onnxscript, onnxruntime, so that the tests exercise the ONNX export
    pip_install -e ".[test,deploy]"
    printf '%s\n' "$stamp" > "$stamp_file"
fi

# --- panoptic and instance segmentation ------------------------------------------------
# detectron2's Cityscapes instance loader imports shapely; its COCOPanopticEvaluator imports
# panopticapi, which the pure-Python panopticapi-lite package provides. panopticapi-lite's
# metadata pins numpy<2 (its code runs on numpy 2), so it is installed without dependencies.
if "$PY" -c 'import shapely' 2>/dev/null; then
    log "shapely already installed"
else
    log "installing shapely"
    pip_install shapely
fi
if "$PY" -c 'import panopticapi.evaluation' 2>/dev/null; then
    log "panopticapi already installed"
else
    log "installing panopticapi-lite (provides panopticapi; without its numpy<2 pin)"
    pip_install --no-deps panopticapi-lite
fi

# --- check and report ------------------------------------------------------------------
"$PY" - <<'PY' || die "the installed stack does not import; see the error above"
import importlib.metadata as md
import sys
import warnings

warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")

import numpy
import torch
import torchvision
import detectron2
from detectron2.modeling import build_model  # noqa: F401
import cityscapesscripts  # noqa: F401
from cityscapesscripts.helpers import labels  # noqa: F401
import shapely  # noqa: F401
import panopticapi.evaluation  # noqa: F401
import onnx  # noqa: F401
import onnxruntime  # noqa: F401
import onnxscript  # noqa: F401


def version(dist):
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


if tuple(int(p) for p in numpy.__version__.split(".")[:2]) >= (2, 4):
    sys.exit(f"numpy {numpy.__version__} is installed, but cityscapesscripts needs numpy<2.4")

rows = [
    ("python", sys.version.split()[0]),
    ("torch", f"{torch.__version__} (CUDA available: {torch.cuda.is_available()})"),
    ("torchvision", torchvision.__version__),
    ("detectron2", f"{detectron2.__version__} ({detectron2.__path__[0]})"),
    ("numpy", numpy.__version__),
    ("cityscapesscripts", version("cityscapesscripts")),
    ("fvcore", version("fvcore")),
    ("shapely", version("shapely")),
    ("panopticapi-lite", version("panopticapi-lite")),
    ("onnx", version("onnx")),
    ("onnxscript", version("onnxscript")),
    ("onnxruntime", version("onnxruntime")),
    ("dyn_seg", version("dyn_seg")),
]
for name, value in rows:
    print(f"{name:18s} {value}")
PY
log "done in $((SECONDS - start_s)) s; interpreter: $PY"
