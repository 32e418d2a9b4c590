"""What the configs name for a run: the fit-check and process-count hooks, the reseeding
train loops, and the search for a checkpoint to resume (``--cfg-options`` checks:
:mod:`asmlp_mm.engine.options`)."""
from .checkpoint import CheckpointFitsHook, ProcessCountHook, find_resumable_checkpoint
from .fits import ConfigMismatchError, ModelFitsHook
from .loops import ReseedingEpochBasedTrainLoop, ReseedingIterBasedTrainLoop, reseed

__all__ = [
    'CheckpointFitsHook', 'ConfigMismatchError', 'ModelFitsHook', 'ProcessCountHook',
    'find_resumable_checkpoint', 'ReseedingEpochBasedTrainLoop',
    'ReseedingIterBasedTrainLoop', 'reseed'
]
