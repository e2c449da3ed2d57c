#!/usr/bin/env bash
# Regenerate constraints.txt from a fresh install of the newest releases: a clean venv set up with
# VMT_DEPS=newest, then frozen (all packages it resolved to, without vmt and torch). Done on purpose: run the
# suite against the new set (`./setup.sh && make test` installs it into .venv) and commit it with its fixes.
#   VMT_PYTHON, VMT_TORCH_SPEC   as for setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VMT_PYTHON:-python3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m venv "$TMP/venv"  # without system site-packages, so that the freeze names every package
VMT_DEPS=newest VMT_VENV="$TMP/venv" ./setup.sh
VPY=$TMP/venv/bin/python
{
    echo "# The dependency set that ./setup.sh installs (pip install -c constraints.txt -e '.[dev]'): every package"
    echo "# the dev install resolved to, pinned, without vmt itself and without torch (setup.sh installs torch first"
    echo "# from VMT_TORCH_SPEC, or keeps an installed one). The newest releases when written, and tested:"
    echo "# regenerate on purpose with \`make lock\` (scripts/lock.sh); \`make test-newest\` tests the newest set."
    echo "# Resolved $(date -u +%Y-%m-%d) on $("$VPY" -c 'import platform, sys; print(f"CPython {platform.python_version()}, {sys.platform} {platform.machine()}")'), with torch $("$VPY" -c 'import torch; print(torch.__version__)')."
    "$VPY" -m pip freeze --exclude-editable | grep -v -i -E '^torch( |==|@)'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "lock: wrote constraints.txt ($(grep -c '==' constraints.txt) packages); see git diff constraints.txt"
