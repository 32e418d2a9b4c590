#!/usr/bin/env bash
# Wheels of the pure-Python part of the stack, for an offline machine that already has
# PyTorch (a GPU box, say): mmengine, mmcv-lite (mmcv without its compiled ops), mmpretrain
# and what they import that such a machine may lack.
#
#   bash tools/fetch_wheels.sh DIR [PYTHON_VERSION]     # default: DIR=.whl, Python 3.12
#
# Assumes the target has numpy, opencv, matplotlib, rich, pyyaml, packaging, Pillow, einops,
# click, markdown and zipp. Install them there without touching its packages with
#   pip install --no-index --no-deps --target SITE DIR/*.whl && export PYTHONPATH=SITE
# (tools/gpu_check.sh does this when WHEELS=DIR is set). Enough for the backbone, the
# classifiers and tools/analysis/benchmark.py; mmdet and mmseg need mmcv's ops: build mmcv
# there as tools/install.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PY_VERSION=${2:-3.12}
pin() { grep -oP "^$1==\K\S+" requirements.txt; }
MMCV_VERSION=$(grep -oP '^MMCV_VERSION=\K\S+' tools/install.sh)
mkdir -p "$DIR"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
    --implementation cp --platform manylinux2014_x86_64 -d "$DIR" \
    "mmengine==$(pin mmengine)" "mmpretrain==$(pin mmpretrain)" "mmcv-lite==$MMCV_VERSION" \
    addict yapf termcolor platformdirs mat4py model-index ordered-set \
    'importlib-metadata<8.8' 'setuptools>=77,<82'
# importlib-metadata >= 8.8 needs lazy-importer; setuptools < 82 still has pkg_resources,
# which mmengine's package lookups (the `mmpretrain::` config bases) import
ls "$DIR"
