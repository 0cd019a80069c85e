#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with every wheel that scripts/gpu_check.sh needs on a GPU machine
# without a package index (Python 3.12, its own torch): detectron2 and its stack, plus the
# test runner. Run on a machine with PyPI access, from the repository root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
shared="${DYN_SEG_SHARED:-../shared}"
if [[ -x "$shared/gpu/prepare_wheels.sh" || -f "$shared/gpu/prepare_wheels.sh" ]]; then
    bash "$shared/gpu/prepare_wheels.sh"
else
    echo "missing $shared/gpu/prepare_wheels.sh (set DYN_SEG_SHARED)" >&2
    exit 1
fi
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${plat[@]}" -d .whl pytest pluggy iniconfig packaging pyyaml shapely
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl panopticapi-lite || true
ls .whl | wc -l
du -sh .whl
