"""Make a checkpoint of tools/train.py fit to share: weights and meta only, hash in the name.

    python tools/model_converters/publish_model.py work_dirs/x/epoch_36.pth checkpoints/x.pth
    # -> checkpoints/x-1a2b3c4d.pth (the first 8 hex digits of the file's SHA-256)

A training checkpoint also holds the state of the run: optimizer, parameter schedulers and
mmengine's message hub (``HistoryBuffer`` objects, numpy arrays). torch >= 2.6 loads
checkpoints weights-only, and refuses those objects unless ``asmlp_mm`` is imported first
(its reader loads them, see ``asmlp_mm.checkpoint_io.load_local_checkpoint``). Most loads
import it through the config's ``custom_imports``, but not those that read the checkpoint
before any config, e.g. ``DetInferencer(model=None, weights=...)`` or
``MMSegInferencer(None, weights=...)``, which take the config from the checkpoint's meta.

This reads the checkpoint with that reader, keeps ``state_dict`` and ``meta`` (the config,
the classes and palette of ``dataset_meta``, the epoch and iteration), drops everything else
and lists it, checks that the result loads with plain ``torch.load(weights_only=True)``,
and names the file with the first 8 hex digits of its SHA-256, as OpenMMLab's model zoos
do. The file is written to a temporary name and renamed when complete
(``asmlp_mm.engine.AtomicLocalBackend``). A kept entry that holds objects the reader left
out (classes other than tensors and plain data) is refused, naming them.
"""
import argparse
import hashlib
import io
import os.path as osp

import torch

from asmlp_mm.checkpoint_io import (CheckpointError, foreign_objects, load_local_checkpoint,
                                    weights_only_refusal)
from asmlp_mm.engine.cli import output_file_problem
from asmlp_mm.runtime.checkpoints import AtomicLocalBackend

#: what a published checkpoint keeps
KEPT = ('state_dict', 'meta')
HASH_DIGITS = 8


def published(checkpoint: dict, source: str):
    """The entries of ``checkpoint`` to publish, and the names of those dropped."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('state_dict'), dict):
        raise CheckpointError(f'{source!r} has no state_dict: not a checkpoint of '
                              'tools/train.py (a bare state dict needs no publishing)')
    weights = checkpoint['state_dict']
    if not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f'{source!r}: its state_dict is empty or holds other things '
                              f'than tensors: not the weights of a model')
    kept = {key: checkpoint[key] for key in KEPT if key in checkpoint}
    foreign = foreign_objects(kept)
    if foreign:
        raise CheckpointError(f'{source!r} cannot be published: ' + '; '.join(
            f'checkpoint{where} is an object of {pickled}' for where, pickled in foreign[:8])
            + ', which asmlp_mm\'s reader does not unpickle (only tensors and plain data): '
            'remove it from the checkpoint to publish it')
    return kept, sorted(key for key in checkpoint if key not in KEPT)


def hashed_name(out_file: str, sha256: str) -> str:
    stem = out_file[:-len('.pth')] if out_file.endswith('.pth') else out_file
    return f'{stem}-{sha256[:HASH_DIGITS]}.pth'


def publish(in_file: str, out_file: str) -> str:
    """Write the published form of ``in_file`` next to ``out_file``; return its path."""
    problem = output_file_problem(out_file, ['.pth'])
    if problem:
        raise SystemExit(problem)
    try:
        kept, dropped = published(load_local_checkpoint(in_file, map_location='cpu'), in_file)
    except CheckpointError as err:  # also a missing file (CheckpointNotFoundError)
        raise SystemExit(str(err))
    buffer = io.BytesIO()
    torch.save(kept, buffer)
    data = buffer.getvalue()
    try:  # as a loader without asmlp_mm's allow-list reads it
        torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
    except Exception as err:
        raise SystemExit(f'the published form of {in_file!r} still does not load '
                         f'weights-only: {weights_only_refusal(err)} (in its meta)')
    target = hashed_name(out_file, hashlib.sha256(data).hexdigest())
    if osp.abspath(target) == osp.abspath(in_file):
        raise SystemExit(f'{in_file!r} is already published')
    if osp.isdir(target):
        raise SystemExit(f'{target!r}, the published name, is a folder')
    AtomicLocalBackend().put(data, target)
    print(f'dropped: {", ".join(dropped) or "nothing"}')
    return target


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('in_file', help='checkpoint written by tools/train.py')
    parser.add_argument('out_file', help='output name; the hash is added before .pth')
    args = parser.parse_args()
    print(f'wrote {publish(args.in_file, args.out_file)}')


if __name__ == '__main__':
    main()
