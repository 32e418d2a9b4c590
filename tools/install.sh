#!/usr/bin/env bash
# Create (or update) the project's virtual environment with the pinned OpenMMLab stack.
#
#   bash tools/install.sh            # -> .venv, CPU build of mmcv's ops
#   VENV=/path/to/venv bash tools/install.sh
#
# The order matters and is explained step by step below. A second run on the same
# machine takes seconds: every step is skipped when what it installs is already there,
# and the compiled mmcv wheel is cached outside the checkout ($ASMLP_MM_CACHE).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
CACHE=${ASMLP_MM_CACHE:-$HOME/.cache/asmlp_mm}
MMCV_VERSION=2.1.0
mkdir -p "$CACHE"

log() { printf '[install] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# Fast path: everything already installed for the current requirement files.
stamp="$VENV/.asmlp_mm-installed"
want=$(cat requirements.txt pyproject.toml tools/install.sh | sha256sum | cut -d' ' -f1)
mmcv_ok() { "$PY" -c "import mmcv, sys; from mmcv.ops import RoIAlign, nms; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null; }
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && mmcv_ok; then
    log "environment $VENV is up to date"
    exit 0
fi

# 0. disk space. A new venv takes about 6.5 GiB (torch 2.14.1 is a CUDA build); pip stops
#    half-way with "No space left on device" otherwise, leaving a broken venv behind.
need_gib=${ASMLP_MM_NEED_GIB:-8}
if ! "$PY" -c "import torch" 2>/dev/null; then
    free_kib=$(df -Pk "$VENV" | awk 'NR == 2 {print $4}')
    if [ -n "$free_kib" ] && [ "$free_kib" -lt $((need_gib * 1024 * 1024)) ]; then
        log "ERROR: $((free_kib / 1024 / 1024)) GiB free on the disk of $VENV; installing torch and the OpenMMLab stack needs about $need_gib GiB."
        log "Free some space, or put the venv on another disk: VENV=/path/to/venv bash tools/install.sh"
        exit 1
    fi
fi

# 1. torch first: mmcv compiles its ops against the installed torch.
log "torch"
"${PIP[@]}" install -q torch==2.14.1 torchvision==0.29.1
# 2. build tools for mmcv. setuptools < 82 still ships pkg_resources (mmcv's setup.py and
#    mmengine's `mmdet::` config bases import it); torch itself wants >= 77.
"${PIP[@]}" install -q 'setuptools>=77,<82' ninja wheel 'numpy<2'
# 3. the rest of the stack, mmcv's own runtime requirements included (mmcv itself is
#    installed with --no-deps below, and its import check needs them).
log "OpenMMLab stack"
"${PIP[@]}" install -q -r requirements.txt

# 3b. mim (`mim search asmlp-mm`, `mim train asmlp-mm CONFIG`), without its dataset
#     download client: see requirements.txt
"${PIP[@]}" install -q --no-deps openmim==0.3.9

# 4. mmcv 2.1.0 from its sdist. There are no mmcv 2.x wheels on PyPI. Its setup.py pins
#    -std=c++17 while torch 2.14's headers need C++20, so the sdist is patched before the
#    build; --no-build-isolation lets the build see torch (otherwise it silently builds
#    without ops). The wheel is kept in $CACHE so that a new venv reuses it.
build_mmcv() {
    local src
    src=$(mktemp -d)
    log "building mmcv $MMCV_VERSION with CPU ops (about 13 minutes on 2 idle cores, up to an hour on busy ones)"
    "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation \
        -d "$src" "mmcv==$MMCV_VERSION"
    tar -xzf "$src"/mmcv-*.tar.gz -C "$src"
    sed -i 's/-std=c++17/-std=c++20/g; s/-std=c++14/-std=c++20/g' "$src/mmcv-$MMCV_VERSION/setup.py"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" wheel -q --no-deps \
        --no-build-isolation --no-cache-dir -w "$src/dist" "$src/mmcv-$MMCV_VERSION"
    # replace the cached wheel only once the new one exists
    rm -f "$CACHE"/mmcv-"$MMCV_VERSION"-*.whl
    mv "$src"/dist/mmcv-"$MMCV_VERSION"-*.whl "$CACHE"/
    rm -rf "$src"
}
install_mmcv() {
    "${PIP[@]}" install -q --no-deps --force-reinstall "$CACHE"/mmcv-"$MMCV_VERSION"-*.whl
}
if ! mmcv_ok; then
    if ! ls "$CACHE"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then build_mmcv; fi
    install_mmcv
    if ! mmcv_ok; then
        "$PY" -c "from mmcv.ops import RoIAlign, nms" 2>&1 | tail -3 || true
        log "cached mmcv wheel has no working ops; rebuilding"
        build_mmcv
        install_mmcv
    fi
fi

# 5. this package, editable.
log "asmlp_mm"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .

# 6. the compiled CPU kernel of the axial shift (asmlp_mm/ops/csrc), built now rather than
#    on the first shift; it lands in torch's extension cache, outside the checkout.
log "CPU kernel of the axial shift"
"$PY" -W error::RuntimeWarning -c "from asmlp_mm.ops import cpu_kernel; assert cpu_kernel.available()"

mmcv_ok || { log "ERROR: mmcv.ops does not import after install"; exit 1; }
"$PY" -c "import asmlp_mm, mmdet, mmseg, mmpretrain; print('[install] ok: asmlp_mm', asmlp_mm.__version__)"
echo "$want" > "$stamp"
