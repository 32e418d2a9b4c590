"""Registers :class:`ASMLP` as a backbone of every OpenMMLab toolbox it serves.

One class, three registries: mmpretrain (``default_scope='mmpretrain'``), mmdet
(``'mmdet'``) and mmsegmentation (``'mmseg'``). A toolbox that is not installed is skipped.
The classifiers of the model zoo also join mmpretrain's model hub, so that its
``list_models``, ``get_model`` and ``inference_model`` know them by their config names.
"""
import importlib
import os.path as osp
from typing import Optional

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


def mim_root() -> Optional[str]:
    """The folder of the model index and the configs: the package's ``.mim`` folder in an
    installed wheel, the repository in an editable install; None if neither has them."""
    package = osp.dirname(osp.abspath(__file__))
    for root in (osp.join(package, '.mim'), osp.dirname(package)):
        if osp.isfile(osp.join(root, 'model-index.yml')):
            return root
    return None


#: the metafile of the classifiers, under :func:`mim_root` (the detectors and segmentors
#: are mmdet's and mmseg's models, not mmpretrain's)
CLASSIFIER_METAFILE = osp.join('configs', 'asmlp', 'metafile.yml')


def register_model_hub() -> None:
    """Add the AS-MLP classifiers to mmpretrain's ``ModelHub`` (nothing where mmpretrain or
    the metafile is missing)."""
    try:
        from mmpretrain.apis import ModelHub
    except ImportError:
        return
    root = mim_root()
    if root is None:
        return
    try:
        ModelHub.register_model_index(osp.join(root, CLASSIFIER_METAFILE), config_prefix=root)
    except ValueError:  # its names are there already: this module was imported again
        pass


register_model_hub()
