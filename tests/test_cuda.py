"""AS-MLP on a GPU: the backbone against the plain NCHW reference computed on the CPU, in
both memory formats, in training and under autocast; the benchmark's CUDA path.

These run where the device ``ASMLP_TEST_DEVICE`` names (default ``cuda``) is there, and skip
elsewhere: CI has no GPU. ``tools/gpu_check.sh`` runs them on a GPU machine;
``ASMLP_TEST_DEVICE=cpu pytest tests/test_cuda.py`` runs the same checks on the CPU."""
import os
import os.path as osp
import sys

import pytest
import torch

from asmlp_mm.models import ASMLP
from asmlp_mm.ops import triton_kernel

from test_fast_paths import ALL_STAGES, TINY, randomize, reference_forward

DEVICE = os.environ.get('ASMLP_TEST_DEVICE', 'cuda')
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def device_present(name):
    kind = torch.device(name).type
    if kind == 'cpu':
        return True
    module = getattr(torch, kind, None)
    return module is not None and module.is_available()


pytestmark = pytest.mark.skipif(not device_present(DEVICE),
                                reason=f'no {DEVICE} device here (ASMLP_TEST_DEVICE)')


@pytest.fixture(autouse=True)
def exact_matmuls():
    """Full fp32 products on the GPU (no TF32), so that 1e-4 tolerances hold."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def reference_on_cpu(model, x):
    """The plain NCHW reference in float64 on the CPU, from a copy of ``model``."""
    cpu = ASMLP(TINY, shift_size=model.stages[0].blocks[0].token_mixer.shift_size,
                padding=model.stages[0].blocks[0].token_mixer.padding,
                out_indices=ALL_STAGES).double()
    cpu.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    return reference_forward(cpu, x.detach().cpu().double()), cpu


@pytest.mark.parametrize('padding', ['zero', 'reflect'])
@pytest.mark.parametrize('channels_last', [False, True])
def test_inference_matches_reference(padding, channels_last):
    model = randomize(ASMLP(TINY, padding=padding, out_indices=ALL_STAGES)).eval().to(DEVICE)
    x = torch.randn(3, 3, 37, 45, device=DEVICE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        outs = model(x)
    refs, _ = reference_on_cpu(model, x)
    for out, ref in zip(outs, refs):
        assert out.device.type == torch.device(DEVICE).type
        assert out.is_contiguous(memory_format=torch.channels_last if channels_last
                                 else torch.contiguous_format)
        torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('channels_last', [False, True])
def test_training_gradients_match_reference(channels_last):
    model = randomize(ASMLP(TINY, out_indices=ALL_STAGES)).train().to(DEVICE)
    x = torch.randn(2, 3, 38, 50, device=DEVICE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
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


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_autocast_stays_close_to_fp32(dtype):
    if DEVICE == 'cpu' and dtype == torch.float16:
        pytest.skip('CPU autocast runs bf16')
    model = randomize(ASMLP(TINY, out_indices=ALL_STAGES)).eval().to(DEVICE)
    x = torch.randn(2, 3, 40, 40, device=DEVICE)
    with torch.no_grad():
        full = model(x)
        with torch.autocast(torch.device(DEVICE).type, dtype=dtype):
            half = model(x)
    for f, h in zip(full, half):
        assert torch.isfinite(h).all()
        scale = f.abs().max()
        assert (h.float() - f).abs().max() <= 0.05 * scale, (h.float() - f).abs().max()


def test_shift_kernel_on_the_device():
    """On CUDA the shift takes the Triton kernel, unless Triton is missing."""
    if torch.device(DEVICE).type != 'cuda':
        pytest.skip('the Triton kernel serves CUDA tensors')
    from asmlp_mm.ops.axial_shift import _use_kernel
    assert _use_kernel(torch.empty(1, 1, 1, 1, device=DEVICE)) == triton_kernel.available()


def test_benchmark_runs_on_the_device():
    sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis'))
    import benchmark
    config = osp.join(ROOT, 'configs', 'demo', 'asmlp-demo_1xb8_shapes-cls.py')
    for extra in ([], ['--amp', '--channels-last']):
        result = benchmark.main([config, '--device', DEVICE, '--batch', '2', '--shape',
                                 '40', '--warmup', '1', '--repeats', '2', *extra])
        assert result['machine']['device'] == DEVICE
        for mode in ('infer', 'train'):
            assert result[mode]['img_s'] > 0 and result[mode]['peak_mb'] > 0
