#!/usr/bin/env bash
# Create .venv and install msaflow with its test tools. Torch goes first: where a local CPU wheel is
# available to pip, `torch==2.13.0` takes it and nothing later pulls a multi-GB CUDA build; elsewhere
# the project's own range `torch>=2.3,<3` applies as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
log=$(mktemp)
"${PIP[@]}" install --upgrade pip >"$log" 2>&1 || true
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" install "torch==${MSAFLOW_TORCH_VERSION:-2.13.0}" >"$log" 2>&1 \
    || "${PIP[@]}" install "torch>=2.3,<3" >"$log" 2>&1 \
    || { grep -v "is ignored" "$log" | tail -20; echo "torch install failed" >&2; exit 1; }
fi
if ! "${PIP[@]}" install -e ".[dev]" >"$log" 2>&1; then
  grep -v "is ignored" "$log" | tail -30
  echo "installing msaflow failed" >&2
  exit 1
fi
rm -f "$log"
.venv/bin/python -c "import torch, prefect, mlflow, optuna, msaflow; print('msaflow environment ready: torch', torch.__version__)"
