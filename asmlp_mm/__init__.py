"""AS-MLP for OpenMMLab 2.0. Importing this package registers everything it provides."""
from . import compat, engine
from .models import ASMLP
from .ops import axial_shift
from .registry import REGISTERED_SCOPES
from .version import __version__

compat.patch_checkpoint_loading()
compat.silence_pkg_resources_warning()
engine.use_atomic_local_writes()

__all__ = ['ASMLP', 'axial_shift', 'REGISTERED_SCOPES', '__version__']
