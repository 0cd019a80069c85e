# Sourced by scripts/install.sh and scripts/run_tests.sh: sets REPO_ROOT and VENV.
#
# VENV is, in order: $DYN_SEG_VENV, the active virtualenv ($VIRTUAL_ENV), or .venv.
# A relative path is taken from the repository root.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ -n "${DYN_SEG_VENV:-}" ]]; then
    VENV="$DYN_SEG_VENV"
elif [[ -n "${VIRTUAL_ENV:-}" ]]; then
    VENV="$VIRTUAL_ENV"
else
    VENV=".venv"
fi
case "$VENV" in
    /*) ;;
    *) VENV="$REPO_ROOT/$VENV" ;;
esac
