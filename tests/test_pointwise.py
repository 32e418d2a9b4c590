"""The fused 1x1-convolution paths (asmlp_mm.fast.pointwise) against plain autograd."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import FUSED, graph_nodes

from asmlp_mm.fast import disabled, pointwise
from asmlp_mm.fast.pointwise import channel_mlp, conv_gelu, pointwise_conv


def convs(*shapes, bias=True):
    torch.manual_seed(0)
    out = []
    for c_in, c_out in shapes:
        conv = nn.Conv2d(c_in, c_out, 1, bias=bias)
        nn.init.normal_(conv.weight, std=0.3)
        if bias:
            nn.init.normal_(conv.bias, std=0.3)
        out.append(conv)
    return out


def channels_last_input(*shape):
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


def grads(outputs, inputs, seed=1):
    torch.manual_seed(seed)
    weight = torch.randn_like(outputs)
    return torch.autograd.grad((outputs * weight).sum(), inputs)


@pytest.mark.parametrize('rows', [1, 7, 60, 4096])
@pytest.mark.parametrize('bias', [True, False])
def test_channel_mlp_matches_plain_modules(rows, bias):
    fc1, fc2 = convs((6, 24), (24, 6), bias=bias)
    act = nn.GELU()
    x = channels_last_input(2, 6, 5, 6)  # 60 rows: blocks of 1, 7 (uneven), 60, all
    params = [x, *fc1.parameters(), *fc2.parameters()]
    out = channel_mlp(fc1, act, fc2, x, rows=rows)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert '_ChannelMLPBackward' in graph_nodes(out)
    ref = fc2(act(fc1(x)))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads(out, params), grads(ref, params)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('rows,blocks', [(7, 9), (30, 2), (60, 1), (4096, 1)])
@pytest.mark.parametrize('bias,approximate', [(True, 'none'), (False, 'tanh')])
def test_channel_mlp_inference_in_blocks_of_rows(rows, blocks, bias, approximate,
                                                 monkeypatch):
    """In inference the MLP runs ``rows`` rows at a time (the hidden activation of a
    block stays in the caches), its weights packed once for all blocks."""
    if pointwise.LINEAR_POINTWISE is None:
        pytest.skip('this PyTorch build has no oneDNN')
    calls, linear = [], pointwise.LINEAR_POINTWISE
    packs, reorder = [], pointwise.REORDER_WEIGHT

    def counted(rows_in, weight, *args):
        calls.append((rows_in.numel() // rows_in.shape[-1], args[1]))
        return linear(rows_in, weight, *args)
    monkeypatch.setattr(pointwise, 'LINEAR_POINTWISE', counted)
    monkeypatch.setattr(pointwise, 'REORDER_WEIGHT',
                        lambda w, n: packs.append(w.shape) or reorder(w, n))
    fc1, fc2 = convs((6, 24), (24, 5), bias=bias)
    act = nn.GELU(approximate=approximate)
    x = channels_last_input(2, 6, 5, 6)  # 60 rows
    with torch.no_grad():
        out = channel_mlp(fc1, act, fc2, x, rows=rows)
        ref = fc2(act(fc1(x)))
        assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        assert [a for _, a in calls] == ['gelu', 'none'] * blocks
        assert max(n for n, _ in calls) == min(rows, 60) and sum(n for n, _ in calls) == 120
        assert len(packs) == (2 if blocks > 1 else 0)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            half = channel_mlp(fc1, act, fc2, x, rows=rows)
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half.float(), ref, rtol=3e-2, atol=3e-2)


def test_channel_mlp_with_frozen_weights_and_input_without_grad():
    fc1, fc2 = convs((4, 16), (16, 4))
    fc2.requires_grad_(False)
    x = torch.randn(3, 4, 4, 5).contiguous(memory_format=torch.channels_last)
    out = channel_mlp(fc1, nn.GELU(), fc2, x, rows=9)
    ref = fc2(F.gelu(fc1(x)))
    params = list(fc1.parameters())
    for got, want in zip(grads(out, params), grads(ref, params)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('approximate', ['none', 'tanh'])
def test_conv_gelu_training_and_inference_match_plain_modules(approximate):
    conv, = convs((8, 12))
    act = nn.GELU(approximate=approximate)
    x = channels_last_input(2, 8, 3, 7)
    out = conv_gelu(conv, act, x)
    assert '_LinearGELUBackward' in graph_nodes(out)
    ref = act(conv(x))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    params = [x, *conv.parameters()]
    for got, want in zip(grads(out, params), grads(ref, params)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the oneDNN fused product, when this build has oneDNN
        torch.testing.assert_close(conv_gelu(conv, act, x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('bias', [True, False])
def test_pointwise_conv_in_inference_is_one_oneDNN_product(bias, monkeypatch):
    if pointwise.LINEAR_POINTWISE is None:
        pytest.skip('this PyTorch build has no oneDNN')
    calls, linear = [], pointwise.LINEAR_POINTWISE

    def counted(*args):
        calls.append(args[3])
        return linear(*args)
    monkeypatch.setattr(pointwise, 'LINEAR_POINTWISE', counted)
    conv, = convs((8, 12), bias=bias)
    x = channels_last_input(2, 8, 3, 7)
    with torch.no_grad():
        out = pointwise_conv(conv, x)
        ref = conv(x)
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        assert calls == ['none']
        with torch.autocast('cpu', dtype=torch.bfloat16):
            half = pointwise_conv(conv, x)
            assert half.dtype == torch.bfloat16
            torch.testing.assert_close(half, conv(x), rtol=2e-2, atol=2e-2)
        # bf16 through oneDNN only where this CPU's oneDNN has it (AVX-512), else plain
        bf16_calls = ['none'] if pointwise.onednn_runs(torch.bfloat16) else []
        with disabled():
            torch.testing.assert_close(pointwise_conv(conv, x), ref, rtol=1e-5, atol=1e-5)
    assert calls == ['none'] + bf16_calls
    out = pointwise_conv(conv, x)  # a graph is recorded: plain autograd
    assert len(calls) == 1 + len(bf16_calls) and out.grad_fn is not None
    for got, want in zip(grads(out, [x, conv.weight]), grads(conv(x), [x, conv.weight])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_packed_weights_are_packed_once_per_block(monkeypatch):
    if pointwise.REORDER_WEIGHT is None:
        pytest.skip('this PyTorch build has no oneDNN')
    packs, reorder = [], pointwise.REORDER_WEIGHT

    def counted(weight, rows):
        packs.append((tuple(weight.shape), weight.dtype, rows))
        return reorder(weight, rows)
    monkeypatch.setattr(pointwise, 'REORDER_WEIGHT', counted)
    fc1, fc2 = convs((8, 32), (32, 8))
    act = nn.GELU()
    x = channels_last_input(3, 8, 2, 5)
    with torch.no_grad():
        ref = fc2(act(fc1(x)))
        with pointwise.packed_weights():
            for images in (slice(None), slice(0, 1), slice(1, 3)):  # other row counts
                out = pointwise_conv(fc2, conv_gelu(fc1, act, x[images]))  # reuse them
                torch.testing.assert_close(out, ref[images], rtol=1e-5, atol=1e-5)
            assert packs == [((32, 8), torch.float32, 30), ((8, 32), torch.float32, 30)]
            with pointwise.packed_weights():  # a block inside shares the packed weights
                pointwise_conv(fc2, conv_gelu(fc1, act, x))
            assert len(packs) == 2
            with torch.autocast('cpu', dtype=torch.bfloat16):  # another dtype: packed anew
                half = conv_gelu(fc1, act, x)  # where this CPU's oneDNN packs bf16 at all
            if pointwise.onednn_runs(torch.bfloat16, packed=True):
                assert packs[-1][:2] == ((32, 8), torch.bfloat16)
            else:
                packs.append('bf16 not packed')
            assert half.dtype == torch.bfloat16 and len(packs) == 3
            torch.testing.assert_close(half.float(), act(fc1(x)), rtol=2e-2, atol=2e-2)
            with pointwise.packed_weights(enabled=False):
                conv_gelu(fc1, act, x)
            assert len(packs) == 3
            fc1.weight = nn.Parameter(fc1.weight * 2)  # a new weight is packed anew
            torch.testing.assert_close(conv_gelu(fc1, act, x), act(fc1(x)), rtol=1e-5,
                                       atol=1e-5)
            assert len(packs) == 4
            fc1.bias = nn.Parameter(fc1.bias + 1)  # so is the weight of a new bias
            torch.testing.assert_close(conv_gelu(fc1, act, x), act(fc1(x)), rtol=1e-5,
                                       atol=1e-5)
            assert len(packs) == 5
        conv_gelu(fc1, act, x)  # outside any block: nothing is packed
        with pointwise.packed_weights():  # a new block packs again
            conv_gelu(fc1, act, x)
    assert len(packs) == 6


def test_fused_backward_refuses_to_run_twice_and_disabled_allows_it():
    fc1, fc2 = convs((4, 16), (16, 4))
    x = channels_last_input(1, 4, 3, 3)
    out = channel_mlp(fc1, nn.GELU(), fc2, x).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError,
                       match=r'runs once per forward.*asmlp_mm\.fast\.disabled\(\)'):
        out.backward()
    out = conv_gelu(fc1, nn.GELU(), x).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match='runs once per forward'):
        out.backward()
    with disabled():
        out = channel_mlp(fc1, nn.GELU(), fc2, x).sum()
    first, = torch.autograd.grad(out, x, retain_graph=True)
    second, = torch.autograd.grad(out, x)
    torch.testing.assert_close(first, second)


@pytest.mark.parametrize('train', [True, False])
def test_fused_paths_under_bf16_autocast_match_autocast_modules(train):
    fc1, fc2 = convs((8, 32), (32, 8))
    act = nn.GELU()
    fc1.train(train), fc2.train(train)
    x = channels_last_input(2, 8, 6, 5)
    params = [x, *fc1.parameters(), *fc2.parameters()]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = channel_mlp(fc1, act, fc2, x)
        hidden = conv_gelu(fc1, act, x)
        with disabled():
            ref = channel_mlp(fc1, act, fc2, x)
            ref_hidden = conv_gelu(fc1, act, x)
    assert bool(FUSED & graph_nodes(out)) == train and not FUSED & graph_nodes(ref)
    assert out.dtype == hidden.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(hidden, ref_hidden, rtol=2e-2, atol=2e-2)
    for got, want in zip(grads(out.float(), params), grads(ref.float(), params)):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=3e-2, atol=3e-2)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):  # oneDNN, bf16
        torch.testing.assert_close(conv_gelu(fc1, act, x), ref_hidden, rtol=2e-2,
                                   atol=2e-2)


def test_plain_modules_where_no_fusion_applies():
    fc1, fc2 = convs((4, 16), (16, 4))
    relu = nn.ReLU()
    x = channels_last_input(1, 4, 3, 3)
    fc1.eval(), fc2.eval()  # gradients in eval mode: plain autograd, backward twice works
    out = channel_mlp(fc1, nn.GELU(), fc2, x)
    assert not FUSED & graph_nodes(out)
    torch.autograd.grad(out.sum(), x, retain_graph=True)
    torch.autograd.grad(out.sum(), x)
    fc1.train(), fc2.train()
    assert torch.equal(channel_mlp(fc1, relu, fc2, x), fc2(relu(fc1(x))))
    nchw = torch.randn(1, 4, 3, 3, requires_grad=True)  # not channels-last
    assert 'ConvolutionBackward0' in graph_nodes(channel_mlp(fc1, nn.GELU(), fc2, nchw))


@pytest.mark.parametrize('act', pointwise.KEEP_INPUT_ACTIVATIONS)
def test_activations_whose_output_may_be_overwritten(act):
    """What :func:`add_into` relies on: the backward of these activations does not read
    their output, so a sum written into it leaves the gradients as they were."""
    torch.manual_seed(0)
    act = act()
    x, other = torch.randn(2, 5, 3, 3, requires_grad=True), torch.randn(2, 5, 3, 3)
    params = [x, *act.parameters()]
    out = pointwise.add_into(act(x), other, act)
    assert out._version == 1  # written in place
    ref = act(x) + other
    torch.testing.assert_close(out, ref)
    for got, want in zip(grads(out, params), grads(ref, params)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize('act', [nn.ReLU(), nn.Sigmoid(), nn.Tanh(), nn.SiLU(inplace=True)])
def test_add_into_leaves_what_backward_needs_alone(act):
    """Their backward reads their output (what hooks saw is the business of the backbone:
    tests/test_asmlp.py, test_inference_leaves_what_hooks_saw_alone)."""
    torch.manual_seed(0)
    x, other = torch.randn(2, 5, 3, 3, requires_grad=True), torch.randn(2, 5, 3, 3)
    fresh = act(x.clone())
    kept = fresh.detach().clone()
    out = pointwise.add_into(fresh, other, act)
    assert out is not fresh and torch.equal(fresh, kept)
    ref = act(x.clone()) + other
    torch.testing.assert_close(out, ref)
    for got, want in zip(grads(out, [x]), grads(ref, [x])):
        torch.testing.assert_close(got, want)
    with torch.no_grad():  # no backward: written in place
        fresh = act(x.clone())
        assert pointwise.add_into(fresh, other, act) is fresh


@pytest.mark.parametrize('fused', ['conv_gelu', 'channel_mlp'])
def test_fused_training_on_an_empty_batch(fused):
    fc1, fc2 = convs((6, 12), (12, 6))
    act = nn.GELU()
    for shape in ((0, 6, 1, 1), (0, 6, 3, 4)):
        x = channels_last_input(*shape)
        if fused == 'conv_gelu':
            out, ref = conv_gelu(fc1, act, x), act(fc1(x))
        else:
            out, ref = channel_mlp(fc1, act, fc2, x), fc2(act(fc1(x)))
        assert out.shape == ref.shape
        params = [x, *fc1.parameters(), *fc2.parameters()]
        got = torch.autograd.grad(out.sum(), params, allow_unused=True)
        want = torch.autograd.grad(ref.sum(), params, allow_unused=True)
        for g, w in zip(got, want):
            assert (g is None) == (w is None)
            assert g is None or (g.shape == w.shape and not g.any())
    assert FUSED & graph_nodes(out)


@pytest.mark.parametrize('fused', ['conv_gelu', 'channel_mlp'])
def test_fused_backward_is_not_differentiable_and_says_so(fused):
    fc1, fc2 = convs((4, 16), (16, 4))
    act = nn.GELU()
    x = channels_last_input(2, 4, 3, 3)
    params = [x, *fc1.parameters()]

    def run():
        if fused == 'conv_gelu':
            return conv_gelu(fc1, act, x)
        return channel_mlp(fc1, act, fc2, x)

    out = run()
    assert FUSED & graph_nodes(out)
    got = torch.autograd.grad(out.square().sum(), params, create_graph=True)
    with disabled():
        want = torch.autograd.grad(run().square().sum(), params, create_graph=True)
    for g, w in zip(got, want):  # the first backward is right
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError,
                       match=r'fused .* not differentiable.*asmlp_mm\.fast\.disabled\(\)'):
        torch.autograd.grad(got[0].square().sum(), params)
    torch.autograd.grad(want[0].square().sum(), params)  # the way out


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('packed', [False, True])
def test_onednn_probe_answers_what_the_op_does_on_a_layer(dtype, packed):
    """The one-time tiny product says whether oneDNN runs a product of a real layer's size
    in that dtype (without AVX-512, or under ONEDNN_MAX_CPU_ISA=AVX2, bf16 fails)."""
    if pointwise.LINEAR_POINTWISE is None:
        pytest.skip('this PyTorch build has no oneDNN')
    rows, weight = torch.randn(3136, 96, dtype=dtype), torch.randn(384, 96, dtype=dtype)
    try:
        if packed:
            weight = pointwise.REORDER_WEIGHT(weight, rows.shape[0])
        out = pointwise.LINEAR_POINTWISE(rows, weight, None, 'none', [], '')
        runs = out.shape == (3136, 384)
    except RuntimeError:
        runs = False
    assert pointwise.onednn_runs(dtype, packed) == runs


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_plain_path_where_onednn_cannot(dtype, monkeypatch):
    """Where the probe says no, inference takes the plain path (no oneDNN call), with the
    plain modules' results."""
    monkeypatch.setattr(pointwise, 'onednn_runs', lambda dtype, packed=False: False)
    calls = []
    monkeypatch.setattr(pointwise, 'LINEAR_POINTWISE', lambda *a: calls.append(a))
    monkeypatch.setattr(pointwise, 'REORDER_WEIGHT', lambda *a: calls.append(a))
    fc1, fc2 = convs((8, 32), (32, 8))
    act = nn.GELU()
    x = channels_last_input(2, 8, 6, 5)
    # no float32 autocast dtype, even when off: torch 2.1 refuses it
    amp = dict(dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    with torch.no_grad(), torch.autocast('cpu', **amp):
        ref = fc2(act(fc1(x)))
        with pointwise.packed_weights():
            outs = [channel_mlp(fc1, act, fc2, x, rows=7), conv_gelu(fc1, act, x),
                    pointwise_conv(fc1, x)]
    assert not calls
    assert outs[0].dtype == ref.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: conv and linear kernels differ
    torch.testing.assert_close(outs[0], ref, rtol=tol, atol=tol)
    with torch.no_grad(), torch.autocast('cpu', **amp):
        torch.testing.assert_close(outs[1], act(fc1(x)), rtol=tol, atol=tol)
        torch.testing.assert_close(outs[2], fc1(x), rtol=tol, atol=tol)
