#!/usr/bin/env bash
# A virtualenv of its own for img2dataset (tests/integration/test_img2dataset.py runs it as users do):
# its pins (albumentations<2, pandas<3, wandb) are not the project's. Idempotent; prints the python.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${IMG2DATASET_VENV:-.venv-img2dataset}
if ! "$VENV/bin/python" -c "import img2dataset" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "img2dataset==1.47.0"
fi
echo "$PWD/$VENV/bin/python"
