"""Training loops whose random numbers depend only on (seed, position in training).

mmengine restores the model, optimizer, schedulers and sampler when it resumes, but not the
random number generators, and its iteration-based loop replays the data pipeline to skip
the batches already trained. A resumed run therefore draws different augmentations, drop
paths and mixup coefficients than an uninterrupted one. These loops reseed Python's, numpy's
and torch's generators before every batch is fetched, from the run's seed and the batch's
place in training, so that interrupting and resuming changes nothing.

Use them in a config: ``train_cfg = dict(type='ReseedingIterBasedTrainLoop', ...)`` or
``dict(type='ReseedingEpochBasedTrainLoop', ...)``.
"""
import random

import numpy as np
import torch
from mmengine.registry import LOOPS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop


def reseed(*keys: int) -> None:
    """Seed random, numpy and torch from a tuple of non-negative integers."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2)
    seed = int(state[0]) << 32 | int(state[1])
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed % 2**63)


class _ReseedingIterator:
    """Wraps a batch iterator: reseeds from ``(seed, *prefix, n)`` before the n-th fetch."""

    def __init__(self, iterator, seed: int, prefix=(), start: int = 0):
        self._iterator = iterator
        self._keys = (seed, *prefix)
        self._count = start

    def __iter__(self):
        return self

    def __next__(self):
        reseed(*self._keys, self._count)
        self._count += 1
        return next(self._iterator)


def _run_seed(runner) -> int:
    seed = runner.seed
    return 0 if seed is None else int(seed)


@LOOPS.register_module()
class ReseedingIterBasedTrainLoop(IterBasedTrainLoop):
    """:class:`IterBasedTrainLoop` that reseeds before fetching each batch (iteration i
    always sees the generators seeded from ``(seed, i)``, also when skipped on resume)."""

    def __init__(self, runner, dataloader, *args, **kwargs):
        super().__init__(runner, dataloader, *args, **kwargs)
        self.dataloader_iterator = _ReseedingIterator(self.dataloader_iterator,
                                                      _run_seed(runner))


@LOOPS.register_module()
class ReseedingEpochBasedTrainLoop(EpochBasedTrainLoop):
    """:class:`EpochBasedTrainLoop` that reseeds from ``(seed, epoch, i)`` before fetching
    the i-th batch of each epoch (resuming happens at epoch boundaries)."""

    def run_epoch(self) -> None:
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        batches = _ReseedingIterator(iter(self.dataloader), _run_seed(self.runner),
                                     prefix=(self._epoch, ))
        for idx, data_batch in enumerate(batches):
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1
