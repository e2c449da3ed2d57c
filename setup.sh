#!/usr/bin/env bash
# One-command set-up: .venv with torch first (an installed torch is kept), then vmt with its dev extras at the
# versions locked in constraints.txt (the newest set tested; `make lock` refreshes it, on purpose).
#   VMT_DEPS         locked (default): every dependency but torch at its constraints.txt version; newest: no
#                    lock, every dependency but torch upgraded to its newest release (`make test-newest`)
#   VMT_TORCH_SPEC   pip spec used when no torch is found (default: torch==2.13.0, the local CPU build here;
#                    on a GPU box e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128")
#   VMT_PYTHON       interpreter for the venv (default: python3)
#   VMT_VENV         the venv's folder (default: .venv)
# Run as root on Debian (CI), it also installs chromium and chromium-driver with apt when chromium is
# missing, for the HTML report's browser test; without network that step only says so (the test then skips).
# torch is never replaced by the second step: it is held at the version just installed or kept. A kept torch
# whose own requirements conflict with the lock (some releases pin sympy exactly) fails that step, and so may a
# Python or platform other than the lock's (its header names them): VMT_DEPS=newest then.
set -euo pipefail
cd "$(dirname "$0")"
PY=${VMT_PYTHON:-python3}
TORCH_SPEC=${VMT_TORCH_SPEC:-torch==2.13.0}
DEPS=${VMT_DEPS:-locked}
VENV=${VMT_VENV:-.venv}
case "$DEPS" in
    locked | newest) ;;
    *) echo "setup: VMT_DEPS must be 'locked' or 'newest', got '$DEPS'" >&2; exit 2 ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
    if "$PY" -c "import torch" 2>/dev/null; then
        echo "setup: torch found in $PY ($("$PY" -c 'import torch; print(torch.__version__)')); the venv will reuse it"
        "$PY" -m venv --system-site-packages "$VENV"
    else
        "$PY" -m venv "$VENV"
    fi
fi
VPY=$VENV/bin/python
"$VPY" -m pip install -q --upgrade pip
if "$VPY" -c "import torch" 2>/dev/null; then
    echo "setup: keeping torch $("$VPY" -c 'import torch; print(torch.__version__)')"
else
    echo "setup: installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    "$VPY" -m pip install -q $TORCH_SPEC
fi
TORCH_PIN=$(mktemp)
trap 'rm -f "$TORCH_PIN"' EXIT
"$VPY" -c 'import torch; print(f"torch=={torch.__version__}")' > "$TORCH_PIN"
if [ "$DEPS" = newest ]; then
    echo "setup: dependencies at their newest releases (no lock)"
    "$VPY" -m pip install -q --upgrade --upgrade-strategy eager -c "$TORCH_PIN" -e ".[dev]"
else
    echo "setup: dependencies from constraints.txt"
    "$VPY" -m pip install -q -c constraints.txt -c "$TORCH_PIN" -e ".[dev]"
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1; then
    echo "setup: installing chromium and chromium-driver (apt) for the HTML report's browser test"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
            >/dev/null 2>&1; then
        echo "setup: could not install chromium (no network?); tests/test_html_report.py's browser test will skip"
    fi
fi
"$VPY" -c "import torch, diffusers, vmt; print(f'setup: vmt {vmt.__version__}, torch {torch.__version__}, diffusers {diffusers.__version__}')"
echo "setup: done. Activate with: source $VENV/bin/activate"
