"""AS-MLP for OpenMMLab 2.0.

Importing this package registers what it provides (``ASMLP`` in the toolboxes' model
registries, the hooks and loops of :mod:`asmlp_mm.engine`) and changes nothing else. The
run-time fixes for the pinned stack are :mod:`asmlp_mm.runtime`, applied where it is
imported (the configs list it in ``custom_imports``).
"""
from . import engine  # noqa: F401  (registers the hooks and loops)
from .models import ASMLP
from .ops import axial_shift
from .registry import REGISTERED_SCOPES
from .version import __version__

__all__ = ['ASMLP', 'axial_shift', 'REGISTERED_SCOPES', '__version__']
