import math
import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import randomize

from asmlp_mm.models import ASMLP
from asmlp_mm.models.published import PublishedASMLP, roll_shift
from asmlp_mm.models.weights import published_key_to_ours
from asmlp_mm import fast
from asmlp_mm.fast import backbone

TINY = dict(embed_dims=8, depths=[1, 1, 2, 1])


def load_published_weights(ours: ASMLP, published: PublishedASMLP):
    state = {}
    for key, value in published.state_dict().items():
        mapped = published_key_to_ours(key)
        if mapped is not None:
            state[mapped] = value
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not unexpected and not missing, (missing, unexpected)


@pytest.mark.parametrize('size', [(64, 64), (45, 71)])
def test_matches_published_model(size):
    torch.manual_seed(0)
    published = PublishedASMLP(8, (1, 1, 2, 1), out_indices=(0, 1, 2, 3)).eval()
    for p in published.parameters():  # not the default ones/zeros of fresh norms
        nn.init.normal_(p, std=0.3)
    ours = ASMLP(TINY, out_indices=(0, 1, 2, 3)).eval()
    load_published_weights(ours, published)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        for a, b in zip(ours(x), published(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('size', [(333, 517), (32, 32), (7, 9)])
def test_output_shapes_and_strides(size):
    model = ASMLP(TINY, out_indices=(0, 1, 2, 3))
    outs = model(torch.randn(1, 3, *size))
    h, w = size
    for i, out in enumerate(outs):
        stride = 4 * 2**i
        assert out.shape == (1, 8 * 2**i, -(-h // stride), -(-w // stride))
        assert (model.strides[i], model.num_features[i]) == (stride, out.shape[1])


def test_arch_presets_widths():
    for arch, dims, depths in [('tiny', 96, [2, 2, 6, 2]), ('s', 96, [2, 2, 18, 2]),
                               ('Base', 128, [2, 2, 18, 2])]:
        model = ASMLP(arch)
        assert model.embed_dims == dims
        assert [len(s.blocks) for s in model.stages] == depths


def test_default_drop_path_follows_arch():
    model = ASMLP(dict(embed_dims=8, depths=[1, 1, 1, 2], drop_path_rate=0.3))
    last = model.stages[3].blocks[1].drop_path
    assert last.drop_prob == pytest.approx(0.3)
    assert isinstance(model.stages[0].blocks[0].drop_path, nn.Identity)


@pytest.mark.parametrize('padding', ['zero', 'replicate', 'reflect', 'circular'])
@pytest.mark.parametrize('connection', ['parallel', 'serial'])
def test_ablation_knobs_run_and_backprop(padding, connection):
    model = ASMLP(TINY, shift_size=3, dilation=[1, 2, 1, 1], padding=padding,
                  connection=connection, out_indices=(3, ))
    out, = model(torch.randn(2, 3, 40, 40))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_serial_connection_differs_from_parallel():
    torch.manual_seed(0)
    a = ASMLP(TINY, connection='parallel').eval()
    b = ASMLP(TINY, connection='serial').eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(a(x)[0], b(x)[0])


def test_frozen_stages():
    model = ASMLP(TINY, out_indices=(0, 1, 2, 3), frozen_stages=2)
    model.train()
    frozen = [model.patch_embed, model.stages[0], model.stages[1], model.norm0, model.norm1]
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    for module in [model.stages[2], model.stages[3], model.norm2]:
        assert module.training
        assert all(p.requires_grad for p in module.parameters())
    before = model.stages[0].blocks[0].mlp.fc1.weight.clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(o.sum() for o in model(torch.randn(1, 3, 32, 32))).backward()
    opt.step()
    assert torch.equal(before, model.stages[0].blocks[0].mlp.fc1.weight)


def test_group_norm_guard_leaves_the_fast_paths_on(monkeypatch):
    """The guard's pre-hooks keep nothing: unlike a user's hooks, they do not stop the
    fused paths nor the chunked inference (see the hook tests below)."""
    from asmlp_mm.ops import torch_compat
    monkeypatch.setattr(torch_compat, 'GROUP_NORM_NEEDS_INPUT_GRAD', True)
    model = ASMLP(TINY)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m._forward_pre_hooks for m in norms)
    assert not any(backbone.watched(m) for m in norms)
    assert not any(backbone.watched(stage) for stage in model.stages)
    in_stage = next(m for m in model.stages[0].modules() if isinstance(m, nn.GroupNorm))
    in_stage.register_forward_pre_hook(lambda module, args: None)  # a user's
    assert backbone.watched(in_stage) and backbone.watched(model.stages[0])


@pytest.mark.parametrize('frozen_stages', [0, 2])
def test_group_norm_guard_of_older_torch(monkeypatch, frozen_stages):
    """torch < 2.14 crashes in the CPU GroupNorm backward on a channels-last input that needs
    no gradient; ASMLP then hands its GroupNorms such inputs as leaves that require grad
    (``asmlp_mm.ops.torch_compat``). Forced on here, it must change no gradient."""
    from asmlp_mm.ops import torch_compat
    monkeypatch.setattr(torch_compat, 'GROUP_NORM_NEEDS_INPUT_GRAD', False)
    kwargs = dict(out_indices=(0, 1, 2, 3), frozen_stages=frozen_stages, drop_path_rate=0.)
    plain = ASMLP(TINY, **kwargs)
    assert not any(m._forward_pre_hooks for m in plain.modules())
    monkeypatch.setattr(torch_compat, 'GROUP_NORM_NEEDS_INPUT_GRAD', True)
    guarded = ASMLP(TINY, **kwargs)
    guarded.load_state_dict(plain.state_dict())
    # the first norm after the frozen layers: what reaches it once the guard has run
    first = guarded.stages[frozen_stages]
    first_norm = first.downsample.norm if frozen_stages else first.blocks[0].norm1
    seen = []
    first_norm.register_forward_pre_hook(lambda m, args: seen.append(args[0].requires_grad))
    x = torch.randn(2, 3, 40, 56)
    grads = []
    # the reference: the unguarded model on an input that requires grad, so that every
    # norm's input does (which older torch also survives)
    for model, inputs in ((plain, x.clone().requires_grad_()), (guarded, x)):
        model.train()
        torch.manual_seed(1)
        sum((o * torch.randn_like(o)).sum() for o in model(inputs)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert seen == [True]
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():  # the frozen layers ran other kernels in the two
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5,
                                   atol=1e-5 * grad.abs().max().item(),
                                   msg=lambda text, name=name: f'{name}: {text}')
    with torch.no_grad():  # and nothing in inference
        outs = guarded.eval()(x)
    assert seen == [True, False]
    assert not any(o.requires_grad for o in outs)


def test_norm_eval_keeps_batchnorm_statistics():
    model = ASMLP(TINY, norm_cfg=dict(type='BN'), norm_eval=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    mean = bns[0].running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(mean, bns[0].running_mean)
    model = ASMLP(TINY, norm_cfg=dict(type='BN'), norm_eval=False).train()
    model(torch.randn(2, 3, 32, 32))
    assert not torch.equal(mean, model.patch_embed.norm.running_mean)


def test_with_cp_same_gradients():
    torch.manual_seed(0)
    a = ASMLP(TINY, with_cp=False)
    b = ASMLP(TINY, with_cp=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    a(x)[0].square().sum().backward()
    b(x)[0].square().sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)


def conv_weight_stats(model):
    """(in_channels, std, max |w|) of the weights of every convolution."""
    return [(m.in_channels * m.kernel_size[0] * m.kernel_size[1], m.weight.std().item(),
             m.weight.abs().max().item()) for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_default_init_is_the_released_one():
    """As the authors' released model: PyTorch's default initialization of every
    convolution (uniform in +-1/sqrt(fan_in), std 1/sqrt(3 fan_in)), norms at 1 and 0."""
    torch.manual_seed(0)
    model = ASMLP(dict(embed_dims=32, depths=[1, 1, 1, 1]))  # >= 1024 weights a layer
    model.init_weights()
    stats = conv_weight_stats(model)
    assert len(stats) > 20
    for fan_in, std, largest in stats:
        assert abs(std * math.sqrt(3 * fan_in) - 1) < 0.1 and largest <= fan_in**-0.5
    fc1 = model.stages[0].blocks[0].mlp.fc1
    assert fc1.bias.abs().max() <= fc1.in_channels**-0.5 and fc1.bias.std() > 0
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_trunc_normal_init_is_selectable():
    torch.manual_seed(0)
    model = ASMLP(TINY, init_cfg=ASMLP.TRUNC_NORMAL_INIT)
    model.init_weights()
    for _, std, largest in conv_weight_stats(model):
        assert 0.015 < std < 0.025 and largest < 0.2
    biases = [m.bias for m in model.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert biases and all(torch.all(b == 0) for b in biases)


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(dilation=2.0), TypeError, r'dilation .*int.*2\.0'),
    (dict(dilation='2'), TypeError, 'dilation'),
    (dict(dilation=[1, 2.0, 1, 1]), TypeError, r'dilation .*2\.0'),
    (dict(dilation=True), TypeError, 'dilation'),
    (dict(out_indices=(1.0, )), TypeError, r'out_indices .*integers.*1\.0'),
    (dict(out_indices='3'), TypeError, r"out_indices .*'3'"),
    (dict(out_indices=(True, )), TypeError, r'out_indices .*True'),
    (dict(out_indices=3.0), TypeError, 'out_indices'),
    (dict(out_indices=()), ValueError, 'out_indices'),
    (dict(patch_size=0), ValueError, 'patch_size must be a positive integer, got 0'),
    (dict(patch_size=2.0), TypeError, 'patch_size'),
    (dict(in_channels=0), ValueError, 'in_channels'),
    (dict(mlp_ratio=0), ValueError, 'mlp_ratio .*got 0'),
    (dict(mlp_ratio=0.1), ValueError, 'mlp_ratio .*hidden channel.*embed_dims=8'),
    (dict(mlp_ratio=float('nan')), ValueError, 'mlp_ratio'),
    (dict(mlp_ratio='4'), TypeError, 'mlp_ratio'),
    (dict(drop_path_rate=1.0), ValueError, r'drop_path_rate .*\[0, 1\).*got 1\.0'),
    (dict(drop_path_rate=-0.1), ValueError, 'drop_path_rate'),
    (dict(drop_path_rate='0.2'), ValueError, 'drop_path_rate'),
    (dict(drop_rate=1.0), ValueError, r'drop_rate .*\[0, 1\).*got 1\.0'),  # nn.Dropout takes it
    (dict(drop_rate=-0.1), ValueError, 'drop_rate'),
    (dict(arch='huge'), ValueError, "'base'"),
    (dict(arch=dict(embed_dims=8)), ValueError, 'depths'),
    (dict(arch=dict(embed_dims=8, depths=[1, 1])), ValueError, 'depths'),
    (dict(arch=dict(embed_dims=8, depths=[1, 1.5, 1, 1])), ValueError, r'depths.*1\.5'),
    (dict(arch=dict(embed_dims=8, depths=[1, 1.0, 1, 1])), ValueError, 'integer block'),
    (dict(arch=dict(embed_dims=8, depths='1111')), ValueError, 'depths'),
    (dict(arch=dict(embed_dims=8, depths=4)), ValueError, 'depths'),
    (dict(arch=dict(embed_dims=8, depths=[1, None, 1, 1])), ValueError, 'depths'),
    (dict(arch=dict(embed_dims=8.5, depths=[1] * 4)), ValueError, r'embed_dims.*8\.5'),
    (dict(arch=dict(embed_dims=8.0, depths=[1] * 4)), ValueError, 'embed_dims'),
    (dict(arch=dict(embed_dims='8', depths=[1] * 4)), ValueError, 'embed_dims'),
    (dict(arch=dict(embed_dims=8, depths=[1] * 4, drop_path=0.4)), ValueError,
     r"unknown \['drop_path'\]"),
    (dict(with_cp='no'), TypeError, "with_cp must be True or False, got 'no'"),
    (dict(norm_eval='yes'), TypeError, 'norm_eval'),
    (dict(shift_size=4), ValueError, 'odd'),
    (dict(shift_size=0), ValueError, 'shift_size'),
    (dict(shift_size=-1), ValueError, 'shift_size'),
    (dict(dilation=0), ValueError, 'dilation'),
    (dict(dilation=[1, 2]), ValueError, 'dilation'),
    (dict(padding='mirror'), ValueError, 'padding'),
    (dict(connection='cross'), ValueError, 'connection'),
    (dict(out_indices=(4, )), ValueError, 'out_indices'),
    (dict(frozen_stages=5), ValueError, 'frozen_stages'),
    (dict(frozen_stages=-2), ValueError, 'frozen_stages'),
    (dict(frozen_stages=1.0), ValueError, 'frozen_stages'),
    (dict(frozen_stages=True), ValueError, 'frozen_stages'),
])
def test_bad_arguments(kwargs, error, match):
    kwargs.setdefault('arch', TINY)
    with pytest.raises(error, match=match):
        ASMLP(**kwargs)


def test_numpy_integers_are_integers():
    """numpy integers count as integers (a numpy dilation was 'not iterable')."""
    model = ASMLP(TINY, patch_size=np.int64(2), dilation=np.int64(2),
                  out_indices=np.array([0, -1]), mlp_ratio=np.float32(0.125),
                  frozen_stages=np.int32(1))
    assert model.out_indices == [0, 3]
    assert type(model.frozen_stages) is int and model.frozen_stages == 1
    assert not any(p.requires_grad for p in model.stages[0].parameters())
    assert all(p.requires_grad for p in model.stages[1].parameters())
    assert [s.blocks[0].token_mixer.dilation for s in model.stages] == [2, 2, 2, 2]
    assert model.stages[0].blocks[0].mlp.fc1.out_channels == 1  # int(8 * 0.125)
    assert [o.shape[1:] for o in model(torch.randn(1, 3, 16, 16))] == [(8, 8, 8), (64, 1, 1)]
    model = ASMLP(TINY, dilation=(np.int64(d) for d in (1, 2, 1, 3)))
    assert [s.blocks[0].token_mixer.dilation for s in model.stages] == [1, 2, 1, 3]
    assert all(type(s.blocks[0].token_mixer.dilation) is int for s in model.stages)
    model = ASMLP(dict(embed_dims=np.int64(8), depths=np.array([1, 1, 1, 1])),
                  shift_size=np.int64(3), with_cp=np.bool_(False))
    assert type(model.embed_dims) is int and model.arch_settings['depths'] == [1, 1, 1, 1]
    assert type(model.stages[0].blocks[0].token_mixer.shift_size) is int
    assert model(torch.randn(1, 3, 32, 32))[0].shape == (1, 64, 1, 1)


ALL_STAGES = (0, 1, 2, 3)


def plain_forward(model: ASMLP, x):
    """ASMLP's forward from its modules, each called as a plain module on NCHW tensors, with
    the released shift (zero padding, dilation 1), out-of-place sums and no stochastic
    depth: none of the fused or in-place ops of the fast path. ``x``: a multiple of 32."""
    x = model.patch_embed.norm(model.patch_embed.proj(x))
    outs = []
    for i, stage in enumerate(model.stages):
        if i > 0:
            x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2],
                           x[:, :, 1::2, 1::2]], 1)
            x = stage.downsample.reduction(stage.downsample.norm(x))
        for block in stage.blocks:
            mixer, mlp = block.token_mixer, block.mlp
            y = mixer.act(mixer.norm_in(mixer.proj_in(block.norm1(x))))
            y_w = mixer.act(mixer.proj_w(roll_shift(y, 3, mixer.shift_size)))
            y_h = mixer.act(mixer.proj_h(roll_shift(y_w if mixer.serial else y, 2,
                                                    mixer.shift_size)))
            x = x + mixer.proj_out(mixer.norm_out(y_h if mixer.serial else y_w + y_h))
            x = x + mlp.fc2(mlp.act(mlp.fc1(block.norm2(x))))
        if i in model.out_indices:
            outs.append(getattr(model, f'norm{i}')(x))
    return outs


@pytest.mark.parametrize('connection', ['parallel', 'serial'])
@pytest.mark.parametrize('act', ['ReLU', 'Sigmoid', 'Tanh', 'GELU', 'SiLU'])
def test_any_activation_trains(act, connection):
    """The W and H branches are summed into the W branch's activation only where no
    backward needs it (ReLU, Sigmoid and Tanh keep their output for backward)."""
    model = randomize(ASMLP(TINY, act_cfg=dict(type=act), connection=connection,
                             drop_path_rate=0., out_indices=ALL_STAGES)).train()
    x = torch.randn(2, 3, 32, 32)
    weights = [torch.randn(1) for _ in ALL_STAGES]
    params = list(model.parameters())

    def loss(outs):
        return sum((w * o.square()).sum() for w, o in zip(weights, outs))

    outs = model(x)
    grads = torch.autograd.grad(loss(outs), params)
    refs = plain_forward(model, x)
    ref_grads = torch.autograd.grad(loss(refs), params)
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for (name, _), grad, ref in zip(model.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-4, msg=name)
    with torch.no_grad():  # and in inference
        for out, ref in zip(model.eval()(x), refs):
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('size', [(32, 32), (40, 56)])
def test_empty_batch(train, size):
    model = ASMLP(TINY, out_indices=ALL_STAGES).train(train)
    shapes = [o.shape for o in model(torch.randn(1, 3, *size))]
    model.zero_grad()
    outs = model(torch.randn(0, 3, *size))
    assert [o.shape for o in outs] == [(0, ) + s[1:] for s in shapes]
    sum(o.sum() for o in outs).backward()
    for name, p in model.named_parameters():  # no image, no gradient
        assert p.grad is None or not p.grad.any(), name
    with torch.no_grad():
        assert [o.shape for o in model(torch.randn(0, 3, *size))] == \
            [(0, ) + s[1:] for s in shapes]


@pytest.mark.parametrize('scope', ['modules', 'global'])
@pytest.mark.parametrize('drop', [0., 0.2])
def test_inference_leaves_what_hooks_saw_alone(scope, drop):
    """The fast inference writes into tensors it has just made, but not into those that
    forward hooks have seen (and may keep, e.g. to extract features)."""
    model = randomize(ASMLP(TINY, out_indices=ALL_STAGES, drop_rate=drop,
                             drop_path_rate=drop)).eval()
    x = torch.randn(2, 3, 32, 32)
    block = model.stages[1].blocks[0]
    y = torch.randn(1, 16, 5, 6)  # NCHW: the 1x1 convs run as modules
    with torch.no_grad():
        expected = model(x), block(y)
    seen, names = [], {m: name for name, m in model.named_modules()}

    def keep(module, args, output):
        if isinstance(output, torch.Tensor):
            seen.append((names.get(module), output, output.clone()))

    if scope == 'global':
        handles = [nn.modules.module.register_module_forward_hook(keep)]
    else:
        handles = [m.register_forward_hook(keep) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            outs = model(x), block(y)
    finally:
        for handle in handles:
            handle.remove()
    # what the fast path wrote into: the outputs of the mixers' first norms, of the mixers
    # and MLPs, of the drop paths and dropouts (which return their input in inference),
    # and on NCHW input of the convs before a GELU and before the residual sums
    mixer, mlp = 'stages.1.blocks.0.token_mixer', 'stages.1.blocks.0.mlp'
    names = {name for name, _, _ in seen}
    assert {f'{mixer}.norm_in', mixer, mlp, 'stages.1.blocks.0.drop_path', f'{mixer}.proj_w',
            f'{mixer}.proj_h', f'{mixer}.proj_out', f'{mlp}.fc1', f'{mlp}.fc2'} <= names
    assert f'{mlp}.drop' in names  # hooks on it: the MLP calls it even at p = 0
    for name, output, kept in seen:
        assert torch.equal(output, kept), name
    for out, ref in zip([*outs[0], outs[1]], [*expected[0], expected[1]]):
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_hooks_see_every_module_called_once_per_use_on_the_whole_batch(mode, monkeypatch):
    """Where forward hooks watch a module, the fast paths call it (they would fuse it away)
    and inference runs the whole batch at once (not image by image): each module is called
    as often as in the plain forward, on the whole batch, with the same outputs."""
    model = randomize(ASMLP(TINY, out_indices=ALL_STAGES, drop_path_rate=0.))
    model.train(mode == 'train')
    # without hooks, inference would run one image at a time
    monkeypatch.setattr(backbone, 'CHUNK_TOKENS', 16)
    x = torch.randn(3, 3, 32, 32)
    leaves = {name: m for name, m in model.named_modules() if not list(m.children())}

    def calls_of(forward):
        calls = {}
        handles = [m.register_forward_hook(
            lambda m, args, out, name=name: calls.setdefault(name, []).append(out.shape[0]))
            for name, m in leaves.items()]
        try:
            with torch.set_grad_enabled(mode == 'train'):
                outs = forward(x)
        finally:
            for handle in handles:
                handle.remove()
        return calls, outs

    calls, outs = calls_of(model)
    plain_calls, refs = calls_of(lambda x: plain_forward(model, x))
    assert set(calls) == set(leaves)  # also those the plain forward skips: drop paths, ...
    assert all(batches == [3] * len(batches) for batches in calls.values())
    assert {name: len(calls[name]) for name in plain_calls} == \
        {name: len(batches) for name, batches in plain_calls.items()}
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_double_backward_in_training_names_the_switch():
    model = randomize(ASMLP(TINY, drop_path_rate=0.)).train()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    grad, = torch.autograd.grad(model(x)[0].square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r'not differentiable.*asmlp_mm\.fast\.disabled\(\)'):
        grad.square().sum().backward()
    with fast.disabled():  # the way out: the plain modules
        grad, = torch.autograd.grad(model(x)[0].square().sum(), x, create_graph=True)
    ref, = torch.autograd.grad(plain_forward(model, x)[0].square().sum(), x,
                               create_graph=True)
    torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-4)
    params = list(model.parameters())
    second = torch.autograd.grad(grad.square().sum(), params)
    ref_second = torch.autograd.grad(ref.square().sum(), params)
    for got, want in zip(second, ref_second):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def save_backbone(path, arch, prefix='backbone.', extra=(), out_indices=ALL_STAGES):
    """A checkpoint holding an ASMLP of ``arch`` under ``prefix`` (and the ``extra`` keys,
    e.g. a detector's neck); the model saved."""
    model = randomize(ASMLP(arch, out_indices=out_indices))
    state = {prefix + key: value for key, value in model.state_dict().items()}
    state.update({key: torch.zeros(1) for key in extra})
    torch.save({'state_dict': state, 'meta': {}}, path)
    return model


def pretrained(path, **kwargs):
    return dict(type='Pretrained', checkpoint=str(path), **kwargs)


def test_pretrained_in_an_init_cfg_list_is_checked_and_loaded_last(tmp_path):
    """A list holding a 'Pretrained' entry is checked as the dict form is (mmengine would
    load nothing of another arch, silently); its other entries initialize first."""
    save_backbone(tmp_path / 'wide.pth', dict(TINY, embed_dims=16))
    model = ASMLP(TINY, init_cfg=[pretrained(tmp_path / 'wide.pth', prefix='backbone.')])
    with pytest.raises(ValueError, match=r'(?s)does not fit ASMLP\(embed_dims=8.*shape of'):
        model.init_weights()
    saved = save_backbone(tmp_path / 'cls.pth', TINY, out_indices=(3, ))  # no norm0-2
    constant = dict(type='Constant', layer=['Conv2d', 'GroupNorm'], val=3., bias=0.)
    model = ASMLP(TINY, out_indices=ALL_STAGES, init_cfg=[
        constant, pretrained(tmp_path / 'cls.pth', prefix='backbone.')])
    model.init_weights()
    for key, value in saved.state_dict().items():  # the checkpoint over the constant
        torch.testing.assert_close(model.state_dict()[key], value)
    assert torch.all(model.norm0.weight == 3)  # what the checkpoint lacks: the constant
    assert model.is_init
    with pytest.raises(ValueError, match='one Pretrained entry.*got 2'):
        ASMLP(TINY, init_cfg=[pretrained(tmp_path / 'cls.pth')] * 2).init_weights()


def test_pretrained_without_the_prefix_of_a_detector_checkpoint_names_it(tmp_path):
    """Without prefix='backbone.', every key is missing and unexpected: the error says
    which prefix to set (the listed problems, cut off, did not)."""
    save_backbone(tmp_path / 'det.pth', TINY, extra=['neck.conv.weight'])
    model = ASMLP(TINY, init_cfg=pretrained(tmp_path / 'det.pth'))
    with pytest.raises(ValueError, match=r"(?s)problem\(s\)\n  none of its keys .*start "
                                         r"with 'backbone.'.*: set prefix='backbone.' in "
                                         r'init_cfg\n  missing in the checkpoint'):
        model.init_weights()


def test_a_pretrained_init_cfg_without_a_checkpoint():
    with pytest.raises(ValueError, match='names no checkpoint'):
        ASMLP(TINY, init_cfg=dict(type='Pretrained', prefix='backbone.')).init_weights()


def test_a_missing_pretrained_file_says_how_to_give_one_or_train_without(tmp_path):
    """The downstream configs name checkpoints/asmlp-*_in1k.pth; without that file the
    error named it and nothing else. tools/train.py ends with the message (a
    CheckpointError), other callers can catch it as a FileNotFoundError."""
    from asmlp_mm.checkpoint_io import CheckpointError
    model = ASMLP(TINY, init_cfg=pretrained(tmp_path / 'nowhere.pth', prefix='backbone.'))
    with pytest.raises(FileNotFoundError, match=r"(?s)nowhere.pth' does not exist: the "
                       r"pretrained weights of ASMLP.*--cfg-options model.backbone.init_cfg."
                       r"checkpoint=PATH; model.backbone.init_cfg=None trains from random"
                       ) as err:
        model.init_weights()
    assert isinstance(err.value, CheckpointError)


def test_pretrained_drops_the_module_prefix_of_a_ddp_checkpoint(tmp_path):
    """As the runner's load_from does (a checkpoint saved from a DDP-wrapped model)."""
    saved = save_backbone(tmp_path / 'ddp.pth', TINY, prefix='module.backbone.')
    for prefix in ('backbone.', 'backbone'):  # mmengine adds the dot
        model = ASMLP(TINY, out_indices=ALL_STAGES,
                      init_cfg=pretrained(tmp_path / 'ddp.pth', prefix=prefix))
        model.init_weights()
        for key, value in saved.state_dict().items():
            torch.testing.assert_close(model.state_dict()[key], value)


@pytest.mark.parametrize('shape,match', [
    ((3, 32, 32), r'N x C x H x W batch, got a 3-dim tensor of shape \(3, 32, 32\); add '
                  r'the batch dimension with x\[None\]'),
    ((1, 3, 32), r'got a 3-dim tensor of shape \(1, 3, 32\)$'),
    ((1, 1, 3, 32, 32), r'got a 5-dim tensor of shape \(1, 1, 3, 32, 32\)$'),
])
def test_input_that_is_not_a_batch_of_images(shape, match):
    with pytest.raises(ValueError, match=match):
        ASMLP(TINY)(torch.randn(shape))
    with pytest.raises(RuntimeError, match='expected input.* to have 3 channels, but got 4'):
        ASMLP(TINY)(torch.randn(1, 4, 32, 32))  # torch's own error is clear


@pytest.mark.parametrize('norm_type,match', [
    ('LN', r"LayerNorm, which normalizes the last dimension: W .*type='GN', num_groups=1"),
    ('BN1d', r"BatchNorm1d, .*use type='BN'"),
    ('IN3d', r"InstanceNorm3d, .*use type='IN'"),  # would run, treating maps as volumes
])
def test_norm_layers_of_other_inputs_are_refused(norm_type, match):
    with pytest.raises(ValueError, match=match):
        ASMLP(TINY, norm_cfg=dict(type=norm_type))


@pytest.mark.parametrize('norm_cfg', [dict(type='GN', num_groups=2), dict(type='BN'),
                                      dict(type='SyncBN'), dict(type='IN')])
def test_norm_layers_of_feature_maps_run(norm_cfg):
    model = ASMLP(TINY, norm_cfg=norm_cfg)
    model(torch.randn(2, 3, 64, 64))[0].sum().backward()
