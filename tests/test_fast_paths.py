"""The fast path of ASMLP (asmlp_mm.fast: channels-last, matmul 1x1 convs, in-place
inference, chunks) against a plain NCHW re-computation from the same parameters; the
switch; ONNX export; torch.compile."""
import inspect
import itertools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import FUSED, graph_nodes, needs_newer_torch, randomize
from mmcv.cnn.bricks import DropPath

from asmlp_mm import fast
from asmlp_mm.fast import backbone, pointwise
from asmlp_mm.models import ASMLP
from asmlp_mm.models.published import PublishedASMLP
from asmlp_mm.models.weights import published_key_to_ours
from asmlp_mm.ops import axial_shift

TINY = dict(embed_dims=10, depths=[1, 2, 1, 1])  # 10 channels: uneven shift groups
ALL_STAGES = (0, 1, 2, 3)


# ------------------------------------------------------------------ reference computation

def reference_source(i, length, padding):
    """Which input position output position ``i`` (maybe outside) reads, or None."""
    if 0 <= i < length:
        return i
    if padding == 'zero':
        return None
    if padding == 'replicate':
        return min(max(i, 0), length - 1)
    if padding == 'circular':
        return i % length
    while not 0 <= i < length:  # reflect: bounce off the edges
        i = -i if i < 0 else 2 * (length - 1) - i if length > 1 else 0
    return i


def reference_shift(x, dim, shift_size, dilation, padding):
    """Channel group g moves by (shift_size // 2 - g) * dilation along ``dim``: an index
    gather per group, zeros where nothing is read."""
    channels, length = x.shape[1], x.shape[dim]
    group = -(-channels // shift_size)
    pieces = []
    for g, start in enumerate(range(0, channels, group)):
        part = x[:, start:start + group]
        shift = (shift_size // 2 - g) * dilation
        sources = [reference_source(i + shift, length, padding) for i in range(length)]
        index = torch.tensor([s if s is not None else 0 for s in sources])
        keep = torch.tensor([s is not None for s in sources], dtype=x.dtype)
        view = [1, 1, 1, 1]
        view[dim] = length
        pieces.append(part.index_select(dim, index) * keep.view(view))
    return torch.cat(pieces, 1)


def ref_norm(norm, x):
    return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)


def ref_conv(conv, x):
    return F.conv2d(x, conv.weight, conv.bias, conv.stride)


def ref_pad(x, multiple):
    return F.pad(x, (0, -x.shape[3] % multiple, 0, -x.shape[2] % multiple))


def ref_mixer(mixer, x):
    def shift(t, dim):
        return reference_shift(t, dim, mixer.shift_size, mixer.dilation, mixer.padding)
    x = F.gelu(ref_norm(mixer.norm_in, ref_conv(mixer.proj_in, x)))
    x_w = F.gelu(ref_conv(mixer.proj_w, shift(x, 3)))
    x_h = F.gelu(ref_conv(mixer.proj_h, shift(x_w if mixer.serial else x, 2)))
    x = x_h if mixer.serial else x_w + x_h
    return ref_conv(mixer.proj_out, ref_norm(mixer.norm_out, x))


def ref_block(block, x):
    x = x + block.drop_path(ref_mixer(block.token_mixer, ref_norm(block.norm1, x)))
    mlp = block.mlp
    hidden = F.gelu(ref_conv(mlp.fc1, ref_norm(block.norm2, x)))
    return x + block.drop_path(ref_conv(mlp.fc2, hidden))


def reference_forward(model: ASMLP, x):
    """ASMLP's forward in plain NCHW ops, from the model's parameters."""
    x = ref_norm(model.patch_embed.norm,
                 ref_conv(model.patch_embed.proj, ref_pad(x, model.patch_embed.patch_size)))
    outs = []
    for i, stage in enumerate(model.stages):
        if i > 0:
            x = ref_pad(x, 2)
            x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2],
                           x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], 1)
            down = stage.downsample
            x = ref_conv(down.reduction, ref_norm(down.norm, x))
        for block in stage.blocks:
            x = ref_block(block, x)
        if i in model.out_indices:
            outs.append(ref_norm(getattr(model, f'norm{i}'), x))
    return tuple(outs)


def assert_outputs_close(outs, refs):
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ equality

@pytest.mark.parametrize('padding,dilation,connection', list(itertools.product(
    ['zero', 'replicate', 'reflect', 'circular'], [1, (1, 3, 2, 1)],
    ['parallel', 'serial'])))
def test_inference_matches_reference(padding, dilation, connection):
    model = randomize(ASMLP(TINY, shift_size=5, dilation=dilation, padding=padding,
                            connection=connection, out_indices=ALL_STAGES)).eval()
    x = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        outs = model(x)
        refs = reference_forward(model, x)
    assert_outputs_close(outs, refs)
    assert all(o.is_contiguous() for o in outs)


@pytest.mark.parametrize('chunk_tokens,calls', [
    (1, [5, 5, 5, 5, 5]),
    # 21x37 input: 6x10 pixels after the embedding and in stage 0, 3x5, 2x3, 1x2 after
    (40, [5, 5, 3, 1, 1]),
    (10**9, [1, 1, 1, 1, 1]),
])
def test_chunked_inference_matches_reference(chunk_tokens, calls, monkeypatch):
    """CPU inference runs the embedding and the stages on groups of images, with the
    weights of a stage packed for oneDNN once where it runs in 4 chunks or more."""
    model = randomize(ASMLP(TINY, out_indices=ALL_STAGES)).eval()
    monkeypatch.setattr(backbone, 'CHUNK_TOKENS', chunk_tokens)
    counts = [0] * 5

    def counted(i, run):  # not by forward hooks: they make a part run on the whole batch
        def call(*args):
            counts[i] += 1
            return run(*args)
        return call

    model.patch_embed.forward = counted(0, model.patch_embed.forward)
    stage_of, run_stage = {id(s): i + 1 for i, s in enumerate(model.stages)}, backbone._stage
    monkeypatch.setattr(backbone, '_stage', lambda stage, x: counted(
        stage_of[id(stage)], run_stage)(stage, x))
    packed, reorder = [], pointwise.REORDER_WEIGHT
    packs = pointwise.onednn_runs(torch.float32, packed=True)
    if packs:
        monkeypatch.setattr(pointwise, 'REORDER_WEIGHT',
                            lambda w, rows: packed.append(w.shape) or reorder(w, rows))
    x = torch.randn(5, 3, 21, 37)
    with torch.no_grad():
        outs = model(x)
        refs = reference_forward(model, x)
    assert counts == calls
    # each 1x1 conv of a stage run in >= 4 chunks is packed once: 6 per block, 1 per merge
    stages = [i for i in range(4) if calls[i + 1] >= 4]
    if packs:
        assert len(packed) == sum(6 * TINY['depths'][i] + (i > 0) for i in stages)
    assert_outputs_close(outs, refs)
    assert all(o.is_contiguous() for o in outs)


def test_inference_on_images_larger_than_a_block_of_rows(monkeypatch):
    """The MLP of CPU inference runs in blocks of rows where an image has more rows than a
    block. A 268x236 image has 67x59 = 3953 pixels after the embedding: with blocks of
    1000 rows, stage 0's one MLP runs in 4 blocks and stage 1's two (34x30) in 2 each."""
    monkeypatch.setattr(backbone, 'channel_mlp', lambda fc1, act, fc2, x: (
        pointwise.channel_mlp(fc1, act, fc2, x, rows=1000)))
    blocks, in_blocks = [], pointwise._mlp_in_blocks
    monkeypatch.setattr(pointwise, '_mlp_in_blocks', lambda fc1, act, fc2, x, rows: (
        blocks.append(-(-x.shape[2] * x.shape[3] // rows))
        or in_blocks(fc1, act, fc2, x, rows)))
    model = randomize(ASMLP(TINY, out_indices=ALL_STAGES)).eval()
    x = torch.randn(1, 3, 268, 236)
    with torch.no_grad():
        outs = model(x)
        refs = reference_forward(model, x)
    assert_outputs_close(outs, refs)
    assert blocks == ([4, 2, 2] if pointwise.onednn_runs(torch.float32) else [])


@pytest.mark.parametrize('padding,connection', [('zero', 'parallel'), ('reflect', 'serial'),
                                                ('circular', 'parallel')])
def test_training_outputs_and_gradients_match_reference(padding, connection):
    model = randomize(ASMLP(TINY, shift_size=3, dilation=2, padding=padding,
                            connection=connection, out_indices=ALL_STAGES)).train()
    x = torch.randn(2, 3, 38, 50)
    weights = [torch.randn(1) for _ in ALL_STAGES]

    def loss(outs):
        return sum((w * o.square()).sum() for w, o in zip(weights, outs))

    outs = model(x)
    grads = torch.autograd.grad(loss(outs), list(model.parameters()))
    refs = reference_forward(model, x)
    ref_grads = torch.autograd.grad(loss(refs), list(model.parameters()))
    assert_outputs_close(outs, refs)
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4, msg=name)


def test_with_cp_frozen_stages_and_channels_last_input():
    model = randomize(ASMLP(TINY, out_indices=ALL_STAGES, with_cp=True,
                            frozen_stages=2)).train()
    x = torch.randn(2, 3, 33, 47).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    outs = model(x)
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in outs)
    refs = reference_forward(model, x)
    assert_outputs_close(outs, refs)
    grad, = torch.autograd.grad(sum(o.sum() for o in outs), x)
    ref_grad, = torch.autograd.grad(sum(o.sum() for o in refs), x)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-4)


def test_stochastic_depth_draws_as_mmcv():
    model = randomize(ASMLP(dict(embed_dims=8, depths=[1, 1, 1, 1]),
                            drop_path_rate=0.5)).train()
    assert isinstance(model.stages[3].blocks[0].drop_path, DropPath)
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(5)
    out, = model(x)
    torch.manual_seed(5)  # the reference calls mmcv's DropPath in the same order
    ref, = reference_forward(model, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.manual_seed(6)
    assert not torch.allclose(model(x)[0], ref)


def test_training_step_matches_published_model():
    torch.manual_seed(0)
    published = PublishedASMLP(8, (1, 1, 2, 1), num_classes=5)
    for p in published.parameters():
        nn.init.normal_(p, std=0.3)
    ours = ASMLP(dict(embed_dims=8, depths=[1, 1, 2, 1]), drop_path_rate=0.)
    ours.load_state_dict({published_key_to_ours(k): v for k, v in
                          published.state_dict().items() if published_key_to_ours(k)})
    x = torch.randn(2, 3, 64, 64)
    feat, = ours(x)
    logits = F.linear(feat.mean((2, 3)), published.head.weight, published.head.bias)
    torch.testing.assert_close(logits, published(x), rtol=1e-5, atol=1e-5)
    logits.sum().backward()
    published(x).sum().backward()
    named = dict(published.named_parameters())
    for key, p in ours.named_parameters():
        ref = next(named[k] for k in named if published_key_to_ours(k) == key)
        torch.testing.assert_close(p.grad, ref.grad, rtol=1e-4, atol=1e-4, msg=key)


def test_inference_leaves_input_alone():
    model = randomize(ASMLP(TINY, out_indices=ALL_STAGES)).eval()
    x = torch.randn(1, 3, 32, 32)
    kept = x.clone()
    with torch.no_grad():
        model(x)
        block = model.stages[1].blocks[0]
        y = torch.randn(1, 20, 4, 4).contiguous(memory_format=torch.channels_last)
        y_kept = y.clone()
        block(y)
    assert torch.equal(x, kept) and torch.equal(y, y_kept)


def test_a_watched_module_runs_plain_and_the_others_fast():
    """A backward hook on one projection (as Grad-CAM sets) sees its gradient: the stage
    holding it runs the plain modules, the others the fused functions."""
    model = randomize(ASMLP(TINY, out_indices=ALL_STAGES)).train()
    seen = []
    model.stages[1].blocks[0].token_mixer.proj_w.register_full_backward_hook(
        lambda module, grad_in, grad_out: seen.append(grad_out[0].shape))
    x = torch.randn(2, 3, 32, 32)
    outs = model(x)
    assert FUSED & graph_nodes(outs[0])
    assert [backbone.watched(stage) for stage in model.stages] == [False, True, False, False]
    sum(o.sum() for o in outs).backward()
    assert seen == [(2, 20, 4, 4)]
    assert_outputs_close(outs, reference_forward(model, x))


SWITCHED_OFF = '''
import torch
from asmlp_mm import fast
from asmlp_mm.models import ASMLP
from helpers import FUSED, graph_nodes
assert not (fast.enabled() or fast.applies() or fast.keep_freed_memory())
out, = ASMLP(dict(embed_dims=8, depths=[1, 1, 1, 1])).train()(torch.randn(1, 3, 32, 32))
assert not FUSED & graph_nodes(out) and 'ConvolutionBackward0' in graph_nodes(out)
'''


def test_the_environment_switch():
    """ASMLP_MM_FAST=0 turns the speed layer off for the process (read at import): the
    plain modules run, and glibc's thresholds stay; a value other than 0 or 1 is
    refused."""
    out, = ASMLP(dict(embed_dims=8, depths=[1, 1, 1, 1])).train()(torch.randn(1, 3, 32, 32))
    assert fast.enabled() and FUSED & graph_nodes(out)  # here: on
    for value in ('0', 'off'):
        env = {**os.environ, fast.ENV_SWITCH: value, 'PYTHONPATH': os.path.dirname(__file__)}
        result = subprocess.run([sys.executable, '-c', SWITCHED_OFF], env=env,
                                capture_output=True, text=True)
        if value == '0':
            assert result.returncode == 0, result.stderr[-2000:]
        else:
            assert result.returncode != 0
            assert "ASMLP_MM_FAST must be 0 (the speed-ups off) or 1 (on, the default), " \
                "got 'off'" in result.stderr


# ------------------------------------------------------------------ export and compile

class ShiftPair(nn.Module):

    def __init__(self, padding):
        super().__init__()
        self.padding = padding

    def forward(self, x):
        return (axial_shift(x, 3, 5, 2, self.padding),
                axial_shift(x.contiguous(memory_format=torch.channels_last), 2, 3, 1,
                            self.padding))


# the TorchScript-based exporter (torch 2.1's export has only that one, and no 'dynamo' flag)
TORCHSCRIPT_EXPORTER = ({'dynamo': False} if 'dynamo' in inspect.signature(
    torch.onnx.export).parameters else {})


@pytest.mark.parametrize('padding', ['zero', 'replicate', 'reflect', 'circular'])
def test_shift_onnx_export(tmp_path, padding):
    ort = pytest.importorskip('onnxruntime')
    x = torch.randn(2, 11, 3, 7)  # uneven groups; shifts longer than the height
    path = str(tmp_path / 'shift.onnx')
    torch.onnx.export(ShiftPair(padding), (x, ), path, opset_version=17,
                      input_names=['x'], **TORCHSCRIPT_EXPORTER)
    outs = ort.InferenceSession(path).run(None, {'x': x.numpy()})
    for out, ref in zip(outs, ShiftPair(padding)(x)):
        torch.testing.assert_close(torch.from_numpy(out), ref, rtol=0, atol=0)


@pytest.mark.parametrize('padding', ['zero', 'reflect'])
def test_onnx_export_matches_onnxruntime(tmp_path, padding):
    ort = pytest.importorskip('onnxruntime')
    model = randomize(ASMLP(TINY, padding=padding, out_indices=ALL_STAGES)).eval()
    x = torch.randn(1, 3, 45, 61)
    path = str(tmp_path / 'asmlp.onnx')
    names = [f'out{i}' for i in ALL_STAGES]
    torch.onnx.export(model, (x, ), path, opset_version=17, input_names=['x'],
                      output_names=names, **TORCHSCRIPT_EXPORTER)
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    outs = session.run(names, {'x': x.numpy()})
    with torch.no_grad():
        refs = model(x)
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(torch.from_numpy(out), ref, rtol=1e-4, atol=1e-4)


@needs_newer_torch('torch.compile(fullgraph=True)')
@pytest.mark.parametrize('padding', ['zero', 'replicate'])
def test_compile_has_no_graph_breaks(padding):
    """Inference and training; the backward of zero padding took another branch (a read of
    the gradient's layout, which dynamo refuses in an autograd.Function)."""
    torch._dynamo.reset()
    model = randomize(ASMLP(TINY, padding=padding, out_indices=ALL_STAGES))
    x = torch.randn(2, 3, 40, 40)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    model.eval()
    with torch.no_grad():
        assert_outputs_close(compiled(x), model(x))
    model.train()
    outs = compiled(x)
    sum(o.sum() for o in outs).backward()
    grad = model.stages[2].blocks[0].token_mixer.proj_w.weight.grad.clone()
    model.zero_grad()
    sum(o.sum() for o in model(x)).backward()
    torch.testing.assert_close(grad, model.stages[2].blocks[0].token_mixer.proj_w.weight.grad,
                               rtol=1e-4, atol=1e-4)
