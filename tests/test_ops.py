import itertools
import math

import pytest
import torch

from asmlp_mm.ops import PADDING_MODES, axial_shift, cpu_kernel


@pytest.fixture(autouse=True, params=['kernel', 'pytorch'])
def shift_path(request):
    """Every test here runs twice: with the compiled CPU kernel and with the PyTorch path."""
    if request.param == 'kernel':
        assert cpu_kernel.available(), 'the CPU kernel of the axial shift was not built'
    with cpu_kernel.use_cpu_kernel(request.param == 'kernel'):
        yield request.param


def source_index(i, length, mode):
    """Where output position i reads from after the shift, by plain case analysis."""
    if 0 <= i < length:
        return i
    if mode == 'zero':
        return None
    if mode == 'replicate':
        return 0 if i < 0 else length - 1
    if mode == 'circular':
        return i % length
    # reflect: bounce between the edges until inside
    if length == 1:
        return 0
    while not 0 <= i < length:
        i = -i if i < 0 else 2 * (length - 1) - i
    return i


def naive_shift(x, dim, shift_size, dilation, mode):
    n, c, h, w = x.shape
    group = math.ceil(c / shift_size)
    out = torch.zeros_like(x)
    for ch in range(c):
        s = (shift_size // 2 - ch // group) * dilation
        for i in range(h):
            for j in range(w):
                if dim == 2:
                    si, sj = source_index(i + s, h, mode), j
                else:
                    si, sj = i, source_index(j + s, w, mode)
                if si is not None and sj is not None:
                    out[:, ch, i, j] = x[:, ch, si, sj]
    return out


@pytest.mark.parametrize('mode,dilation,dim', list(itertools.product(
    PADDING_MODES, [1, 2, 3], [2, 3])))
def test_matches_naive_reference(mode, dilation, dim):
    torch.manual_seed(0)
    x = torch.randn(2, 11, 5, 7)  # 11 channels: groups of 3, 3, 3, 2, 0
    out = axial_shift(x, dim, 5, dilation, mode)
    torch.testing.assert_close(out, naive_shift(x, dim, 5, dilation, mode), rtol=0, atol=0)


@pytest.mark.parametrize('channels,shift_size', [(1, 3), (4, 5), (6, 5), (7, 7), (3, 1)])
def test_uneven_and_empty_groups(channels, shift_size):
    x = torch.randn(1, channels, 6, 6)
    for mode in PADDING_MODES:
        torch.testing.assert_close(axial_shift(x, 3, shift_size, 1, mode),
                                   naive_shift(x, 3, shift_size, 1, mode))


def test_direction_matches_published_kernel():
    # group 0 moves its content up (towards row 0) by shift_size // 2 rows
    x = torch.zeros(1, 5, 7, 1)
    x[0, 0, 4, 0] = 1.
    out = axial_shift(x, 2, 5)
    assert out[0, 0, 2, 0] == 1. and out.sum() == 1.
    x = torch.arange(7.).view(1, 1, 1, 7).repeat(1, 5, 1, 1)
    out = axial_shift(x, 3, 5)
    assert out[0, :, 0, 3].tolist() == [5., 4., 3., 2., 1.]


def test_shift_larger_than_image():
    x = torch.randn(1, 5, 2, 2)
    for mode in PADDING_MODES:
        torch.testing.assert_close(axial_shift(x, 2, 5, 3, mode),
                                   naive_shift(x, 2, 5, 3, mode))


@pytest.mark.parametrize('mode', PADDING_MODES)
@pytest.mark.parametrize('dim', [2, 3])
def test_gradcheck(mode, dim):
    x = torch.randn(2, 7, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: axial_shift(t, dim, 3, 2, mode), (x, ))
    assert torch.autograd.gradgradcheck(lambda t: axial_shift(t, dim, 3, 1, mode), (x, ))


def test_gradient_matches_autograd_of_reference():
    x = torch.randn(2, 9, 5, 6, requires_grad=True)
    g = torch.randn(2, 9, 5, 6)
    for mode in PADDING_MODES:
        ours, = torch.autograd.grad(axial_shift(x, 3, 5, 1, mode), x, g)
        ref, = torch.autograd.grad(naive_shift(x, 3, 5, 1, mode), x, g)
        torch.testing.assert_close(ours, ref)


def test_dtypes_and_memory_format():
    x = torch.randn(2, 10, 6, 6)
    ref = axial_shift(x, 2, 5)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        torch.testing.assert_close(axial_shift(x.to(dtype), 2, 5), ref.to(dtype))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out = axial_shift(x_cl, 2, 5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref)


class Shift(torch.nn.Module):

    def forward(self, x):
        return axial_shift(x, 3, 5, 2, 'reflect') + axial_shift(x, 2, 3, 1, 'zero')


def test_traceable_and_exportable():
    # torch.jit.script is deprecated in torch 2.x; tracing and torch.export are supported
    x = torch.randn(1, 5, 6, 6)
    ref = Shift()(x)
    torch.testing.assert_close(torch.jit.trace(Shift(), x)(x), ref)
    exported = torch.export.export(Shift(), (x, ))
    torch.testing.assert_close(exported.module()(x), ref)


@pytest.mark.parametrize('kwargs,match', [
    (dict(shift_size=4), 'odd'),
    (dict(shift_size=0), 'positive'),
    (dict(shift_size=-3), 'positive'),
    (dict(dilation=0), 'dilation'),
    (dict(padding='mirror'), 'padding'),
    (dict(dim=1), 'dim'),
    (dict(dim=2.0), 'dim'),
    (dict(shift_size=5.0), 'shift_size'),
])
def test_bad_arguments(kwargs, match):
    args = dict(dim=2, shift_size=5, dilation=1, padding='zero')
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        axial_shift(torch.zeros(1, 5, 4, 4), **args)



def test_numpy_integer_arguments():
    import numpy as np
    x = torch.randn(1, 7, 5, 6)
    out = axial_shift(x, np.int64(3), np.int64(5), np.int32(2), 'reflect')
    torch.testing.assert_close(out, naive_shift(x, 3, 5, 2, 'reflect'), rtol=0, atol=0)


@pytest.mark.parametrize('mode', PADDING_MODES)
def test_no_channels(mode):
    """A tensor without channels has nothing to shift: an empty result on every path."""
    x = torch.randn(2, 0, 4, 5, requires_grad=True)
    out = axial_shift(x, 2, 5, 1, mode)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize('mode', PADDING_MODES)
@pytest.mark.filterwarnings('error:There is a performance drop')  # vmap's slow fallback
def test_torch_func_transforms(mode):
    """torch.func's grad, jacrev, jacfwd and vmap take the shift through its own rules (vmap
    ran the compiled kernel image by image, through PyTorch's fallback), and agree with the
    reference; so does forward-mode AD."""
    import torch.autograd.forward_ad as fwAD
    from torch.func import grad, jacfwd, jacrev, vmap
    torch.manual_seed(0)
    x = torch.randn(1, 6, 4, 5, dtype=torch.float64)
    weight = torch.randn_like(x)
    ours = grad(lambda t: (axial_shift(t, 3, 5, 1, mode) * weight).sum())(x)
    ref, = torch.autograd.grad((naive_shift(x.requires_grad_(), 3, 5, 1, mode) * weight).sum(),
                               x)
    torch.testing.assert_close(ours, ref)
    x = x.detach()
    jacobian = jacrev(lambda t: axial_shift(t, 2, 3, 1, mode))(x)
    ref = torch.autograd.functional.jacobian(lambda t: naive_shift(t, 2, 3, 1, mode), x)
    torch.testing.assert_close(jacobian, ref)
    torch.testing.assert_close(jacfwd(lambda t: axial_shift(t, 2, 3, 1, mode))(x), ref)
    tangent = torch.randn_like(x)
    with fwAD.dual_level():
        out = axial_shift(fwAD.make_dual(x, tangent), 3, 5, 2, mode)
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent,
                                   naive_shift(tangent, 3, 5, 2, mode))
    batch = torch.randn(3, 2, 6, 4, 5, dtype=torch.float64)
    for in_dim in (0, 2):
        mapped = vmap(lambda t: axial_shift(t, 3, 5, 2, mode), in_dims=in_dim)(
            batch.movedim(0, in_dim))
        torch.testing.assert_close(
            mapped, torch.stack([naive_shift(b, 3, 5, 2, mode) for b in batch]))
