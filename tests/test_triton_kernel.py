"""The Triton kernel of the axial shift (the GPU path) against the PyTorch path.

On a machine with a GPU these tests run on CUDA tensors. Without one they run on CPU
tensors, the kernel executed by Triton's interpreter (what ``TRITON_INTERPRET=1`` does)."""
import importlib
import itertools

import pytest
import torch

from asmlp_mm.ops import PADDING_MODES, axial_shift, cpu_kernel, triton_kernel
from asmlp_mm.ops.axial_shift import _shift, shift_plan

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')


@pytest.fixture(autouse=True)
def kernel_here(monkeypatch):
    """Without a GPU, the kernel runs under Triton's interpreter, on CPU tensors."""
    if triton_kernel.triton is None:
        pytest.skip('Triton is not installed (a CPU-only PyTorch build)')
    if DEVICE == 'cpu':
        interpreter = pytest.importorskip(
            'triton.runtime.interpreter',
            reason=f'Triton {triton_kernel.triton.__version__} has no interpreter for CPU '
                   f'tensors (torch 2.1 comes with Triton 2.1)')
        InterpretedFunction = interpreter.InterpretedFunction
        kernel = triton_kernel._axial_gather_kernel
        monkeypatch.setattr(triton_kernel, '_axial_gather_kernel',
                            InterpretedFunction(kernel.fn))


def pytorch_path(fn, *args):
    """``fn(*args)`` on the CPU through the PyTorch path (no kernel), back on DEVICE."""
    args = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    with cpu_kernel.use_cpu_kernel(False):
        return fn(*args).to(DEVICE)


def gather(x, dim, shift_size, dilation, padding, adjoint=False):
    plan = shift_plan(x.shape[1], x.shape[dim], shift_size, dilation, padding, adjoint)
    return triton_kernel.axial_gather(x, dim, *plan.tables)


def layouts(shape):
    n, c, h, w = shape
    x = torch.randn(shape, device=DEVICE)
    return {
        'contiguous': x,
        'channels_last': x.contiguous(memory_format=torch.channels_last),
        'strided view': torch.randn(n, h, c, w, device=DEVICE).transpose(1, 2),
    }


def test_kernel_matches_pytorch_path():
    torch.manual_seed(0)
    dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool)
    for (name, t), dtype in itertools.product(layouts((2, 13, 9, 11)).items(), dtypes):
        t = (t > 0) if dtype == torch.bool else (t * 10).to(dtype)
        for dim, padding, (shift_size, dilation) in itertools.product(
                (2, 3), PADDING_MODES, ((5, 1), (7, 2), (3, 4))):
            out = gather(t, dim, shift_size, dilation, padding)
            ref = pytorch_path(axial_shift, t, dim, shift_size, dilation, padding)
            case = (name, dtype, dim, padding, shift_size, dilation)
            assert torch.equal(out, ref), case
            assert out.dtype == dtype, case
            assert out.is_contiguous(memory_format=torch.channels_last) == (
                name == 'channels_last'), case


def test_adjoint_plan_matches_pytorch_adjoint():
    """Backward of a zero-padded shift: the opposite shift, as the same gather."""
    torch.manual_seed(0)
    for (name, g), dim, (shift_size, dilation) in itertools.product(
            layouts((2, 10, 6, 7)).items(), (2, 3), ((5, 1), (5, 3), (9, 1))):
        out = gather(g, dim, shift_size, dilation, 'zero', adjoint=True)
        ref = pytorch_path(_shift, g, dim, shift_size, dilation, 'zero', True)
        assert torch.equal(out, ref), (name, dim, shift_size, dilation)


def test_sizes_smaller_than_the_shifts_and_empty_tensors():
    torch.manual_seed(0)
    for shape in ((1, 3, 1, 2), (2, 5, 2, 1), (1, 1, 4, 4), (0, 6, 3, 3), (2, 7, 33, 40)):
        for name, t in layouts(shape).items():
            for dim, padding in itertools.product((2, 3), PADDING_MODES):
                out = gather(t, dim, 5, 2, padding)
                ref = pytorch_path(axial_shift, t, dim, 5, 2, padding)
                assert torch.equal(out, ref), (shape, name, dim, padding)


def test_rows_longer_than_a_block():
    """An inner block of more than MAX_BLOCK elements is cut into several programs."""
    torch.manual_seed(0)
    for name, t in layouts((1, 5, 3, triton_kernel.MAX_BLOCK // 2 + 3)).items():
        for dim in (2, 3):
            assert torch.equal(gather(t, dim, 5, 1, 'reflect'),
                               pytorch_path(axial_shift, t, dim, 5, 1, 'reflect')), (name, dim)


def test_bad_plans_raise():
    x = torch.randn(1, 5, 4, 4, device=DEVICE)
    ends, shifts, index = shift_plan(5, 4, 5, 1, 'zero').tables
    with pytest.raises(ValueError, match='NCHW tensor and dim 2 or 3'):
        triton_kernel.axial_gather(x[0], 2, ends, shifts, index)
    with pytest.raises(ValueError, match='NCHW tensor and dim 2 or 3'):
        triton_kernel.axial_gather(x, 1, ends, shifts, index)
    with pytest.raises(ValueError, match='plan does not fit'):
        triton_kernel.axial_gather(x, 2, ends, shifts, index[:-1])


@needs_cuda
def test_shift_on_cuda_takes_the_kernel_and_its_gradients_match(monkeypatch):
    calls = []
    gather_fn = triton_kernel.axial_gather
    monkeypatch.setattr(triton_kernel, 'axial_gather',
                        lambda *a: calls.append(a[1]) or gather_fn(*a))
    torch.manual_seed(0)
    for padding in PADDING_MODES:
        x = torch.randn(2, 12, 8, 9, device='cuda', requires_grad=True)
        grad = torch.randn_like(x)
        out = axial_shift(x, 3, 5, 2, padding)
        out.backward(grad)
        x_cpu = x.detach().cpu().requires_grad_()
        with cpu_kernel.use_cpu_kernel(False):
            ref = axial_shift(x_cpu, 3, 5, 2, padding)
        ref.backward(grad.cpu())
        assert torch.equal(out.detach().cpu(), ref.detach()), padding
        torch.testing.assert_close(x.grad.cpu(), x_cpu.grad, rtol=0, atol=1e-6)
        with triton_kernel.use_triton_kernel(False):
            assert torch.equal(axial_shift(x.detach(), 3, 5, 2, padding), out.detach())
    # forward for every mode, and the backward of the zero-padded shift
    assert len(calls) == len(PADDING_MODES) + 1


class FailingKernel:
    """Stands in for a kernel that Triton cannot compile or launch here, after ``works``
    launches of ``kernel`` that went well."""

    def __init__(self, error, works=0, kernel=None):
        self.error, self.works, self.kernel = error, works, kernel

    def __getitem__(self, grid):
        if self.works > 0:
            self.works -= 1
            return self.kernel[grid]

        def launch(*args, **kwargs):
            raise self.error
        return launch


@pytest.mark.parametrize('failing', ['forward', 'backward'])
def test_a_failing_kernel_turns_itself_off_and_the_shift_still_runs(monkeypatch, failing):
    """Where Triton fails on a machine, the shift warns once, turns the kernel off and
    takes the PyTorch path, in forward or in backward. (Routed here through CPU tensors.)"""
    shift_module = importlib.import_module('asmlp_mm.ops.axial_shift')  # not the function
    monkeypatch.setattr(triton_kernel._switch, 'on', True)  # restored after the test
    monkeypatch.setattr(triton_kernel, '_axial_gather_kernel', FailingKernel(
        RuntimeError('ptxas fatal: no such GPU'), works=int(failing == 'backward'),
        kernel=triton_kernel._axial_gather_kernel))
    monkeypatch.setattr(shift_module, '_use_kernel', lambda x: triton_kernel.enabled())
    monkeypatch.setattr(shift_module, '_kernel_gather', lambda x, dim, plan: (
        triton_kernel.try_axial_gather(x, dim, *plan.tables)))
    torch.manual_seed(0)
    x = torch.randn(2, 10, 6, 7, device=DEVICE, requires_grad=True)
    grad = torch.randn_like(x)
    with pytest.warns(RuntimeWarning, match='ptxas fatal.*PyTorch path'):
        out = axial_shift(x, 2, 5, 1, 'zero')
        out.backward(grad)
    assert not triton_kernel.enabled()
    ref_x = x.detach().cpu().requires_grad_()
    with cpu_kernel.use_cpu_kernel(False):
        ref = axial_shift(ref_x, 2, 5, 1, 'zero')
        ref.backward(grad.cpu())
    assert torch.equal(out.detach().cpu(), ref.detach())
    assert torch.equal(x.grad.cpu(), ref_x.grad)


def test_out_of_memory_is_raised_as_it_is(monkeypatch):
    monkeypatch.setattr(triton_kernel._switch, 'on', True)
    monkeypatch.setattr(triton_kernel, '_axial_gather_kernel',
                        FailingKernel(torch.OutOfMemoryError('out of memory')))
    x = torch.randn(1, 5, 4, 4, device=DEVICE)
    with pytest.raises(torch.OutOfMemoryError):
        triton_kernel.try_axial_gather(x, 2, *shift_plan(5, 4, 5, 1, 'zero').tables)
    assert triton_kernel.enabled()
