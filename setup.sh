#!/usr/bin/env bash
# One-command set-up: .venv with torch first (an installed torch is kept), then vmt with its dev extras.
#   VMT_TORCH_SPEC   pip spec used when no torch is found (default: torch==2.13.0, the local CPU build here;
#                    on a GPU box e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128")
#   VMT_PYTHON       interpreter for the venv (default: python3)
set -euo pipefail
cd "$(dirname "$0")"
PY=${VMT_PYTHON:-python3}
TORCH_SPEC=${VMT_TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
    if "$PY" -c "import torch" 2>/dev/null; then
        echo "setup: torch found in $PY ($("$PY" -c 'import torch; print(torch.__version__)')); the venv will reuse it"
        "$PY" -m venv --system-site-packages .venv
    else
        "$PY" -m venv .venv
    fi
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
if "$VPY" -c "import torch" 2>/dev/null; then
    echo "setup: keeping torch $("$VPY" -c 'import torch; print(torch.__version__)')"
else
    echo "setup: installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    "$VPY" -m pip install -q $TORCH_SPEC
fi
"$VPY" -m pip install -q -e ".[dev]"
"$VPY" -c "import torch, diffusers, vmt; print(f'setup: vmt {vmt.__version__}, torch {torch.__version__}, diffusers {diffusers.__version__}')"
echo "setup: done. Activate with: source .venv/bin/activate"
