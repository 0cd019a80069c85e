#!/usr/bin/env bash
# Install everything (quick when already installed), then run the test suite.
# Extra arguments go to pytest, e.g.: bash scripts/run_tests.sh -k routing -m "not slow"
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$REPO_ROOT"

bash scripts/install.sh

# Run the whole suite unless a test path (file, directory or node id) was given.
has_path=0
for arg in "$@"; do
    if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then
        has_path=1
    fi
done
if [[ $has_path == 0 ]]; then
    set -- tests "$@"
fi

# Two pytest-xdist workers; one math thread each unless the caller chose otherwise, so
# the workers do not oversubscribe the cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$VENV/bin/python" -m pytest -q -n 2 "$@"
