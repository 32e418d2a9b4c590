#!/usr/bin/env bash
# The torch 2.1 leg of the CI: the backbone, shift, classification and converter tests on
# torch 2.1.2 + mmcv-lite 2.1.0, the oldest stack asmlp_mm supports (OpenMMLab's prebuilt
# mmcv 2.1.0 CUDA wheels end at torch 2.1).
#
#   bash tools/ci/torch21.sh [pytest args]
#
# The venv lives outside the checkout, in $ASMLP_MM_CACHE (~/.cache/asmlp_mm), one per
# content of tools/ci/requirements-torch21.txt: later runs reuse it and take only the tests'
# time. The first build downloads torch 2.1.2's CUDA wheels (about 2.5 GB) and needs about
# 6 GiB of disk. The tests import the checkout's asmlp_mm (PYTHONPATH), not an installed one.
set -euo pipefail

cd "$(dirname "$0")/../.."
REQUIREMENTS=tools/ci/requirements-torch21.txt
CACHE=${ASMLP_MM_CACHE:-$HOME/.cache/asmlp_mm}
PYTHON=${PYTHON:-python3}
# mmdet and mmseg need the full mmcv, whose ops would have to be built against torch 2.1
TESTS=(tests/test_asmlp.py tests/test_ops.py tests/test_pointwise.py tests/test_fast_paths.py
       tests/test_cpu_kernel.py tests/test_classification.py tests/test_converters.py)

log() { printf '[torch21] %s\n' "$*"; }

key=$(cat "$REQUIREMENTS" | sha256sum | cut -c1-12)
VENV=$CACHE/venv-torch21-$key
stamp=$VENV/.installed
mkdir -p "$CACHE"

if [ ! -f "$stamp" ]; then
    if ! "$PYTHON" -c 'import sys; sys.exit(not (3, 8) <= sys.version_info[:2] <= (3, 11))'; then
        log "ERROR: torch 2.1.2 has wheels for Python 3.8 to 3.11; $PYTHON is $("$PYTHON" -V 2>&1). Point PYTHON to one of those, e.g. PYTHON=python3.11."
        exit 1
    fi
    need_gib=${ASMLP_MM_NEED_GIB:-7}
    free_kib=$(df -Pk "$CACHE" | awk 'NR == 2 {print $4}')
    if [ -n "$free_kib" ] && [ "$free_kib" -lt $((need_gib * 1024 * 1024)) ]; then
        log "ERROR: $((free_kib / 1024 / 1024)) GiB free on the disk of $CACHE; the torch 2.1 venv needs about $need_gib GiB."
        log "Free some space, or point ASMLP_MM_CACHE to another disk."
        exit 1
    fi
    # venvs of earlier requirement lists are of no further use
    for old in "$CACHE"/venv-torch21-*; do
        if [ -d "$old" ] && [ "$old" != "$VENV" ]; then log "removing $old"; rm -rf "$old"; fi
    done
    rm -rf "$VENV"
    log "creating $VENV (first run: downloads torch 2.1.2, several minutes)"
    "$PYTHON" -m venv "$VENV"
    # PIP_CONSTRAINT= : a constraints file that the environment names may pin another torch
    PIP_CONSTRAINT= "$VENV/bin/python" -m pip --disable-pip-version-check install -q \
        -r "$REQUIREMENTS"
    date > "$stamp"
fi

# the venv's tools first (ninja, which builds the shift's CPU kernel), as activating it would
export PATH=$VENV/bin:$PATH
"$VENV/bin/python" -c "import torch, mmcv; print('[torch21] torch', torch.__version__, '| mmcv', mmcv.__version__)"
# the checkout's asmlp_mm, whatever is installed in the venv
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    "${TESTS[@]}" "$@"
