"""What differs between the torch releases asmlp_mm supports (2.1 to 2.15), in one place.

Each name here is what a recent torch offers, with the stand-in that older releases need;
each says which releases need the stand-in, so that it can go once the lower bound in
``pyproject.toml`` passes them. The rest of the package imports these names instead of
asking torch's version itself. (The C++ kernel has its own two version switches, in
``csrc/axial_shift.cpp``.)

What works only on a newer torch than the oldest supported is listed in
:data:`NEEDS_NEWER_TORCH`, and :func:`too_old_for` says so in one sentence (the tests of
such a feature skip with it).
"""
import codecs
import re
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn


def _release(version: str) -> Tuple[int, int]:
    """(major, minor) of a torch version string ('2.1.2+cu121' -> (2, 1))."""
    match = re.match(r'(\d+)\.(\d+)', version)
    if match is None:
        raise ValueError(f'not a torch version: {version!r}')
    return int(match.group(1)), int(match.group(2))


#: (major, minor) of the installed torch, for comparisons (strings compare '2.9' > '2.14')
TORCH_VERSION = _release(torch.__version__)

#: what needs a newer torch than the oldest supported: feature -> (oldest release, why)
NEEDS_NEWER_TORCH = {
    'torch.compile(fullgraph=True)': (
        (2, 4), 'dynamo before torch 2.4 traces no autograd.Function in the setup_context form '
                '(the axial shift\'s, in training), and on torch 2.1 not the fast paths\' '
                'hook checks either: torch.compile works there, with graph breaks'),
    'copy-on-write clones': (
        (2, 3), 'torch 2.3 brought lazy clones (torch._lazy_clone), and with them the '
                'allocator method that lets them copy the CPU kernel\'s huge-page outputs'),
}


def too_old_for(feature: str) -> Optional[str]:
    """Why the installed torch is too old for ``feature`` (a key of
    :data:`NEEDS_NEWER_TORCH`), or ``None`` where it is new enough."""
    need, why = NEEDS_NEWER_TORCH[feature]
    if TORCH_VERSION >= need:
        return None
    return f'{feature} needs torch >= {need[0]}.{need[1]}, this is {torch.__version__}: {why}'


# torch < 2.3 has no torch.compiler.is_compiling. torch._utils.is_compiling is the same
# flag there: dynamo reads it as True while it traces (the very function, so it is bound
# here, not wrapped).
is_compiling: Callable[[], bool] = getattr(torch.compiler, 'is_compiling',
                                           torch._utils.is_compiling)


def _not_exporting() -> bool:
    return False


# torch < 2.7 has no torch.compiler.is_exporting. Its torch.export traces with dynamo, so
# is_compiling() is True inside it, which is all that the callers need.
is_exporting: Callable[[], bool] = getattr(torch.compiler, 'is_exporting', _not_exporting)


def is_traced() -> bool:
    """Whether a tracer, compiler or exporter is recording the computation."""
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            or is_compiling() or is_exporting())


def is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def is_autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` ('cpu', 'cuda', ...)."""
    if TORCH_VERSION >= (2, 4):
        return torch.is_autocast_enabled(device_type)
    # torch < 2.4: one function per device (CPU and CUDA asked here; others read as off)
    if device_type == 'cpu':
        return torch.is_autocast_cpu_enabled()
    if device_type == 'cuda':
        return torch.is_autocast_enabled()
    return False


def get_autocast_dtype(device_type: str) -> torch.dtype:
    """The dtype autocast computes in on ``device_type`` (when it is on)."""
    if TORCH_VERSION >= (2, 4):
        return torch.get_autocast_dtype(device_type)
    # torch < 2.4: one function per device
    return (torch.get_autocast_cpu_dtype() if device_type == 'cpu'
            else torch.get_autocast_gpu_dtype())


# torch < 2.4 has the CUDA one only (torch.OutOfMemoryError is the same class since)
OutOfMemoryError = getattr(torch, 'OutOfMemoryError', torch.cuda.OutOfMemoryError)


def event_start_ns(event) -> int:
    """When a ``torch.profiler`` (Kineto) event started, in ns: torch 2.1's events have
    only ``start_us()``, later ones ``start_ns()``."""
    start_ns = getattr(event, 'start_ns', None)
    return start_ns() if start_ns is not None else event.start_us() * 1000


def weights_only_globals() -> Dict[str, object]:
    """'module.qualname' -> object, for every class and function that torch's weights-only
    unpickler loads: its own list and what ``torch.serialization.add_safe_globals`` added
    (torch < 2.4 has no way to add any). torch < 2.5 lists no ``_codecs.encode``, which
    pickles bytes (numpy arrays' data among them), and gets it here."""
    from torch import _weights_only_unpickler
    allowed = dict(_weights_only_unpickler._get_allowed_globals())
    allowed.setdefault('_codecs.encode', codecs.encode)
    get_safe_globals = getattr(torch.serialization, 'get_safe_globals', lambda: [])
    for entry in get_safe_globals():
        obj, path = entry if isinstance(entry, tuple) else (
            entry, f'{entry.__module__}.{entry.__qualname__}')
        allowed[path] = obj
    return allowed


def grad_scaler(device_type: str = 'cuda', **kwargs):
    """A ``GradScaler`` for ``device_type``; torch < 2.3 has ``torch.cuda.amp``'s only."""
    if hasattr(torch.amp, 'GradScaler'):
        return torch.amp.GradScaler(device_type, **kwargs)
    if device_type != 'cuda':
        raise RuntimeError(f'a GradScaler for {device_type!r} needs torch >= 2.3, this is '
                           f'{torch.__version__}')
    return torch.cuda.amp.GradScaler(**kwargs)


#: PyTorch before 2.14 crashes (segmentation fault) in the CPU backward of GroupNorm when the
#: input is channels-last and needs no gradient while the norm's weight or bias does. In
#: AS-MLP that is the first norm after frozen layers, e.g. with ``frozen_stages >= 0``
#: (seen on torch 2.11 and 2.13; 2.14.1 works). Remove with the hook below once torch >= 2.14
#: is required.
GROUP_NORM_NEEDS_INPUT_GRAD = TORCH_VERSION < (2, 14)


def _group_norm_input_with_grad(module: nn.GroupNorm, args):
    """Forward pre-hook: where the crash above would happen, the norm's input goes in as a
    leaf that requires grad (the same memory, detached), so that the backward takes the
    path that also computes the input's gradient, which nothing then uses."""
    x = args[0]
    if (torch.is_grad_enabled() and x.device.type == 'cpu' and not x.requires_grad
            and is_channels_last(x)
            and any(p.requires_grad for p in module.parameters(recurse=False))
            and not is_traced()):
        return (x.detach().requires_grad_(), ) + tuple(args[1:])
    return None


# it keeps nothing and changes no value: the fast paths need not make way for it
_group_norm_input_with_grad.keeps_nothing = True


def guard_group_norms(model: nn.Module) -> None:
    """Give every GroupNorm of ``model`` the hook above, on the torch versions that need it
    (:data:`GROUP_NORM_NEEDS_INPUT_GRAD`); elsewhere do nothing."""
    if GROUP_NORM_NEEDS_INPUT_GRAD:
        for module in model.modules():
            if isinstance(module, nn.GroupNorm):
                module.register_forward_pre_hook(_group_norm_input_with_grad)
