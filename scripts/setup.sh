#!/usr/bin/env bash
# Set up docstream in ./.venv.   Usage: bash scripts/setup.sh [test]
# ("test" adds the test-only dependencies and the optional Ray engine, so the tests cover it)
# torch: the venv sees the system's packages, so a torch already installed there (a CUDA build, say) is
# kept; otherwise the CPU build torch==2.13.0 is installed, never an unpinned multi-GB CUDA wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv
PY=.venv/bin/python
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0
extra=""
[ "${1:-}" = "test" ] && extra="[test,ray]"
"$PY" -m pip install -q -e ".${extra}"
