# What every AS-MLP config adds to its toolbox's runtime: the fit checks of asmlp_mm.engine,
# so that whichever tool runs the config (tools/train.py and test.py, mmdet's, mmseg's and
# mmpretrain's own, mim train/test) refuses with one clear message a checkpoint that does
# not fit the model (load_from, resume; exact when testing or resuming), a model whose neck
# or heads do not fit the backbone or the dataset's classes, and warns on resuming with
# another number of processes. A config that sets its own custom_hooks keeps these by
# listing them too: custom_hooks = [*_base_.custom_hooks, ...].
custom_hooks = [
    dict(type='CheckpointFitsHook', priority='VERY_HIGH'),
    dict(type='ModelFitsHook', priority='VERY_HIGH'),
    dict(type='ProcessCountHook'),
]
