"""Registers :class:`ASMLP` as a backbone of every OpenMMLab toolbox it serves.

One class, three registries: mmpretrain (``default_scope='mmpretrain'``), mmdet
(``'mmdet'``) and mmsegmentation (``'mmseg'``). A toolbox that is not installed is skipped.
"""
import importlib

from .models import ASMLP

TOOLBOX_REGISTRIES = ('mmpretrain.registry', 'mmdet.registry', 'mmseg.registry')


def register_all():
    """Register ASMLP in the MODELS registry of each installed toolbox; return their scopes."""
    scopes = []
    for name in TOOLBOX_REGISTRIES:
        try:
            registry = importlib.import_module(name).MODELS
        except ImportError:
            continue
        # module_dict, not registry.get(): get() would import the whole toolbox
        if registry.module_dict.get('ASMLP') is not ASMLP:
            registry.register_module(module=ASMLP, force=True)
        scopes.append(registry.scope)
    return scopes


REGISTERED_SCOPES = register_all()
