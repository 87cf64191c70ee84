#!/usr/bin/env bash
# Create (idempotently) the separate virtual environment that holds a real Label Studio for the
# end-to-end tests of the ML backend. Kept apart from the project's venv so LS's pins (Django,
# pandas, pyarrow...) never fight the model's.
#
#   bash scripts/install_label_studio.sh            # -> .cache/ls-venv/bin/label-studio
#   LS_VENV=/some/where bash scripts/install_label_studio.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LS_VERSION="${LS_VERSION:-1.23.2}"
LS_VENV="${LS_VENV:-.cache/ls-venv}"
PYTHON="${PYTHON:-python3}"

if [ -x "$LS_VENV/bin/label-studio" ] && \
   "$LS_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('label-studio') != '$LS_VERSION')" 2>/dev/null; then
  echo "label-studio $LS_VERSION already installed in $LS_VENV"
  exit 0
fi
mkdir -p "$(dirname "$LS_VENV")"
[ -x "$LS_VENV/bin/python" ] || "$PYTHON" -m venv "$LS_VENV"
"$LS_VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$LS_VENV/bin/python" -m pip install -q --disable-pip-version-check "label-studio==$LS_VERSION"
# (not `label-studio --version`: it checks PyPI for a newer release and can hang without network)
"$LS_VENV/bin/python" -c "import label_studio, importlib.metadata as m; print('label-studio', m.version('label-studio'))"
echo "label-studio $LS_VERSION installed in $LS_VENV"
