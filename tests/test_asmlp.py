import pytest
import torch
import torch.nn as nn

from asmlp_mm.models import ASMLP
from asmlp_mm.models.published import PublishedASMLP, published_key_to_ours

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


@pytest.mark.parametrize('frozen_stages', [0, 2])
def test_group_norm_guard_of_older_torch(monkeypatch, frozen_stages):
    """torch < 2.14 crashes in the CPU GroupNorm backward on a channels-last input that needs
    no gradient; ASMLP then hands its GroupNorms such inputs as leaves that require grad
    (``asmlp_mm.compat``). Forced on here, it must change no gradient."""
    from asmlp_mm import compat
    monkeypatch.setattr(compat, 'GROUP_NORM_NEEDS_INPUT_GRAD', False)
    kwargs = dict(out_indices=(0, 1, 2, 3), frozen_stages=frozen_stages, drop_path_rate=0.)
    plain = ASMLP(TINY, **kwargs)
    assert not any(m._forward_pre_hooks for m in plain.modules())
    monkeypatch.setattr(compat, 'GROUP_NORM_NEEDS_INPUT_GRAD', True)
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


def test_default_init():
    model = ASMLP(TINY)
    model.init_weights()
    # as released: truncated normal, std 0.02 (timm's bounds are +-2 absolute), zero bias
    w = model.stages[0].blocks[0].mlp.fc1.weight
    assert 0.015 < w.std() < 0.025 and abs(w.mean()) < 0.005
    assert torch.all(model.stages[0].blocks[0].mlp.fc1.bias == 0)
    assert torch.all(model.stages[0].blocks[0].norm1.weight == 1)


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(arch='huge'), ValueError, "'base'"),
    (dict(arch=dict(embed_dims=8)), ValueError, 'depths'),
    (dict(arch=dict(embed_dims=8, depths=[1, 1])), ValueError, 'depths'),
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
])
def test_bad_arguments(kwargs, error, match):
    kwargs.setdefault('arch', TINY)
    with pytest.raises(error, match=match):
        ASMLP(**kwargs)
