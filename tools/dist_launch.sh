#!/usr/bin/env bash
# Usage: tools/dist_launch.sh TOOL NUM_PROCS [TOOL args...]
# Runs tools/TOOL (train.py or test.py) in NUM_PROCS processes with torch.distributed.run:
# one per GPU (or per CPU worker with gloo when no GPU is present). tools/dist_train.sh
# and tools/dist_test.sh call it, with --launcher pytorch among the arguments. NNODES,
# NODE_RANK, PORT and MASTER_ADDR set up runs on several machines.
set -e
TOOL=$1
NPROC=$2
shift 2
# a number of processes, or one of torchrun's names for one
if ! [[ "$NPROC" =~ ^([1-9][0-9]*|auto|cpu|gpu)$ ]]; then
    echo "${CALLER:-$(basename "$0")}: NUM_PROCS must be a positive number (or torchrun's" \
        "auto, cpu, gpu), got '$NPROC'" >&2
    exit 2
fi
DIR=$(cd "$(dirname "$0")" && pwd)
exec "${PYTHON:-python}" -m torch.distributed.run --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --nproc_per_node="$NPROC" --master_port="${PORT:-29500}" \
    "$DIR/$TOOL" "$@"
