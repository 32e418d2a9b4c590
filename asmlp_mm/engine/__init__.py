from .checkpoint import (AtomicLocalBackend, CheckpointFitsHook, CheckpointMismatchError,
                         describe_mismatches, find_resumable_checkpoint,
                         state_dict_mismatches, use_atomic_local_writes)
from .loops import ReseedingEpochBasedTrainLoop, ReseedingIterBasedTrainLoop, reseed

__all__ = [
    'AtomicLocalBackend', 'CheckpointFitsHook', 'CheckpointMismatchError',
    'describe_mismatches', 'find_resumable_checkpoint',
    'state_dict_mismatches', 'use_atomic_local_writes', 'ReseedingEpochBasedTrainLoop',
    'ReseedingIterBasedTrainLoop', 'reseed'
]
