from .checkpoint import (AtomicLocalBackend, CheckpointFitsHook, CheckpointMismatchError,
                         ProcessCountHook, describe_mismatches, find_resumable_checkpoint,
                         load_fitting_weights, state_dict_mismatches,
                         use_atomic_local_writes)
from .fits import ConfigMismatchError, ModelFitsHook
from .loops import ReseedingEpochBasedTrainLoop, ReseedingIterBasedTrainLoop, reseed
from .memory import keep_freed_memory

__all__ = [
    'AtomicLocalBackend', 'CheckpointFitsHook', 'CheckpointMismatchError',
    'ConfigMismatchError', 'ModelFitsHook', 'ProcessCountHook',
    'describe_mismatches', 'find_resumable_checkpoint', 'load_fitting_weights',
    'state_dict_mismatches', 'use_atomic_local_writes', 'ReseedingEpochBasedTrainLoop',
    'ReseedingIterBasedTrainLoop', 'reseed', 'keep_freed_memory'
]
