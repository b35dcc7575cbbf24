#!/usr/bin/env bash
# LLaMA-Factory's own environment, for tests/integration/test_consumers.py: LLaMA-Factory from PyPI loads our
# `sft` exports with its own code. Its pins (transformers <= 5.6, datasets <= 4.0, a CUDA torch) clash with
# ours, so it lives in .venv-llamafactory, installed without its dependencies, over this project's
# environment (torch, transformers, datasets) through a .pth file, with the few it adds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TARGET=.venv-llamafactory
test -x "$TARGET/bin/python" || python3 -m venv "$TARGET"
site=$("$TARGET/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ours=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# addsitedir, not a bare path: our environment's own .pth files (the editable vlmbatch) must apply too.
echo "import site; site.addsitedir('$(cd "$ours" && pwd)')" > "$site/zz_vlmbatch_environment.pth"
"$TARGET/bin/python" -m pip install -q --no-deps \
  'llamafactory==0.9.5' 'peft==0.18.1' 'accelerate>=1.3' 'omegaconf==2.4.0' 'antlr4-python3-runtime==4.9.3'
