#!/usr/bin/env bash
# Usage: tools/dist_train.sh CONFIG NUM_PROCS [train.py args...]
# One process per GPU (or per CPU worker with gloo when no GPU is present).
if [ $# -lt 2 ]; then
    echo "usage: bash tools/dist_train.sh CONFIG NUM_PROCS [train.py args...]" >&2
    exit 2
fi
CALLER=$(basename "$0") exec bash "$(dirname "$0")/dist_launch.sh" train.py "$2" "$1" \
    --launcher pytorch "${@:3}"
