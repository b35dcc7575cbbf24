#!/usr/bin/env bash
# Link the code folders into build/pkg/vlmbatch/ so that tools which cannot follow the editable install's
# import hook see the package as installed: mypy (MYPYPATH), and machines without an install at all (the
# GPU machine puts build/pkg on PYTHONPATH). Prints the folder to put on the path.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build/pkg/vlmbatch
for part in schema media worker producer; do
  ln -sfn "../../../$part" "build/pkg/vlmbatch/$part"
done
echo "$PWD/build/pkg"
