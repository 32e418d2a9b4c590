"""AS-MLP on every device here: the CPU, and CUDA where there is a GPU (CI has none; on a
GPU machine ``tools/gpu_check.sh`` runs this file). The backbone against the plain NCHW
reference computed in float64 on the CPU, in both memory formats, in training and under
autocast; the shift's kernel; the benchmark's device path."""
import os.path as osp

import pytest
import torch
from helpers import load_tool

from asmlp_mm.models import ASMLP
from asmlp_mm.ops import cpu_kernel, triton_kernel

from test_fast_paths import ALL_STAGES, TINY, randomize, reference_forward

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
on_devices = pytest.mark.parametrize('device', DEVICES)


@pytest.fixture(autouse=True)
def exact_matmuls():
    """Full fp32 products on the GPU (no TF32), so that 1e-4 tolerances hold."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def reference_on_cpu(model, x, **kwargs):
    """The plain NCHW reference in float64 on the CPU, from a copy of ``model`` (built
    with ``kwargs``)."""
    cpu = ASMLP(TINY, out_indices=ALL_STAGES, **kwargs).double()
    cpu.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    return reference_forward(cpu, x.detach().cpu().double()), cpu


def inputs(shape, device, channels_last):
    x = torch.randn(shape, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@on_devices
@pytest.mark.parametrize('padding', ['zero', 'reflect'])
@pytest.mark.parametrize('channels_last', [False, True])
def test_inference_matches_reference(device, padding, channels_last):
    model = randomize(ASMLP(TINY, padding=padding, out_indices=ALL_STAGES)).eval().to(device)
    x = inputs((3, 3, 37, 45), device, channels_last)
    with torch.no_grad():
        outs = model(x)
    refs, _ = reference_on_cpu(model, x, padding=padding)
    for out, ref in zip(outs, refs):
        assert out.device.type == device
        assert out.is_contiguous(memory_format=torch.channels_last if channels_last
                                 else torch.contiguous_format)
        torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-4, atol=1e-4)


@on_devices
@pytest.mark.parametrize('channels_last', [False, True])
def test_training_gradients_match_reference(device, channels_last):
    model = randomize(ASMLP(TINY, out_indices=ALL_STAGES)).train().to(device)
    x = inputs((2, 3, 38, 50), device, channels_last)
    weights = [torch.randn(1).item() for _ in ALL_STAGES]
    outs = model(x)
    sum((w * o.square()).sum() for w, o in zip(weights, outs)).backward()
    refs, cpu = reference_on_cpu(model, x)
    sum((w * o.square()).sum() for w, o in zip(weights, refs)).backward()
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out.detach().cpu().double(), ref.detach(), rtol=1e-4,
                                   atol=1e-4)
    for (name, p), ref in zip(model.named_parameters(), cpu.parameters()):
        torch.testing.assert_close(p.grad.cpu().double(), ref.grad, rtol=1e-3, atol=1e-3,
                                   msg=name)


@pytest.mark.parametrize('device,dtype', [('cpu', torch.bfloat16)] + [
    ('cuda', dtype) for dtype in (torch.float16, torch.bfloat16) if 'cuda' in DEVICES])
def test_autocast_stays_close_to_fp32(device, dtype):
    model = randomize(ASMLP(TINY, out_indices=ALL_STAGES)).eval().to(device)
    x = torch.randn(2, 3, 40, 40, device=device)
    with torch.no_grad():
        full = model(x)
        with torch.autocast(device, dtype=dtype):
            half = model(x)
    for f, h in zip(full, half):
        assert h.dtype in (dtype, torch.float32) and torch.isfinite(h).all()
        error = (h.float() - f).abs().max()
        assert error <= 0.05 * f.abs().max(), error


@on_devices
def test_shift_takes_the_kernel_of_its_device(device):
    """The CPU kernel on the CPU, the Triton kernel on CUDA (each where it is there)."""
    from asmlp_mm.ops.axial_shift import _use_kernel
    kernel = cpu_kernel if device == 'cpu' else triton_kernel
    assert kernel.available()
    x = torch.empty(1, 1, 1, 1, device=device)
    assert _use_kernel(x)
    with cpu_kernel.use_cpu_kernel(False), triton_kernel.use_triton_kernel(False):
        assert not _use_kernel(x)


@on_devices
def test_benchmark_runs_on_the_device(device):
    benchmark = load_tool('analysis/benchmark.py')
    config = osp.join(ROOT, 'configs', 'demo', 'asmlp-demo_1xb8_shapes-cls.py')
    for extra in ([], ['--amp', '--channels-last']):
        result = benchmark.main([config, '--device', device, '--batch', '2', '--shape',
                                 '40', '--warmup', '1', '--repeats', '2', *extra])
        assert result['machine']['device'] == device
        for mode in ('infer', 'train'):
            assert result[mode]['img_s'] > 0 and result[mode]['peak_mb'] > 0
