#!/usr/bin/env bash
# Usage: tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [test.py args...]
# One process per GPU (or per CPU worker with gloo when no GPU is present).
if [ $# -lt 3 ]; then
    echo "usage: bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [test.py args...]" >&2
    exit 2
fi
CALLER=$(basename "$0") exec bash "$(dirname "$0")/dist_launch.sh" test.py "$3" "$1" "$2" \
    --launcher pytorch "${@:4}"
