"""tools/model_converters/asmlp_to_mm.py against checkpoints in the published layouts.

The published checkpoints are re-created here: the backbone is
:class:`asmlp_mm.models.published.PublishedASMLP` with every parameter randomized (norms
included), the detection / segmentation parts are written key by key in the mmdet 2.x /
mmseg 0.x layout of the authors' configs (``mmdet2_*`` / ``mmseg0_*`` below).
"""
import os.path as osp
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import load_tool, needs_packages
from mmengine.config import Config

from asmlp_mm.analysis import build_model_from_config
from asmlp_mm.models.published import PublishedASMLP

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLS_TINY = osp.join(ROOT, 'configs', 'asmlp', 'asmlp-tiny_8xb128_in1k.py')
# our Cascade config with narrow heads (32 channels, fc 128) and 3 classes
CASCADE_NARROW = osp.join(ROOT, 'configs', 'demo',
                          'cascade-mask-rcnn_asmlp-demo_fpn_shapes-coco.py')
MASK_T = osp.join(ROOT, 'configs', 'mask_rcnn', 'mask-rcnn_asmlp-tiny_fpn_ms-crop-1x_coco.py')
UPERNET_T = osp.join(ROOT, 'configs', 'upernet',
                     'upernet_asmlp-tiny_8xb2-160k_ade20k-512x512.py')


conv = load_tool('model_converters/asmlp_to_mm.py')


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random: weights small, norm scales around 1, biases around 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if 'norm' in name and name.endswith('weight'):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith('bias'):
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise * (2. / max(p[0].numel(), 1))**0.5)
    return module.eval()


def published(embed_dim, depths, **kwargs):
    return randomize(PublishedASMLP(embed_dim, depths, **kwargs))


def save(tmp_path, name, ckpt):
    path = str(tmp_path / name)
    torch.save(ckpt, path)
    return path


def tiny_cls_config(tmp_path, embed_dims, depths, num_classes):
    path = tmp_path / 'cls_tiny.py'
    path.write_text(
        f"_base_ = '{CLS_TINY}'\n"
        f"model = dict(backbone=dict(arch=dict(_delete_=True, embed_dims={embed_dims}, "
        f"depths={list(depths)})), head=dict(in_channels={embed_dims * 8}, "
        f"num_classes={num_classes}))\n")
    return str(path)


# ----------------------------------------------------------------- mmdet 2.x / mmseg 0.x
def conv_module(prefix, cin, cout, k, norm=False, gen=None):
    """mmcv ConvModule keys: ``conv`` (no bias with a norm) and ``bn``."""
    out = {f'{prefix}.conv.weight': torch.randn(cout, cin, k, k, generator=gen) * 0.05}
    if norm:
        out.update({f'{prefix}.bn.weight': 1 + 0.1 * torch.randn(cout, generator=gen),
                    f'{prefix}.bn.bias': 0.1 * torch.randn(cout, generator=gen),
                    f'{prefix}.bn.running_mean': 0.1 * torch.randn(cout, generator=gen),
                    f'{prefix}.bn.running_var': torch.rand(cout, generator=gen) + 0.5,
                    f'{prefix}.bn.num_batches_tracked': torch.tensor(1000)})
    else:
        out[f'{prefix}.conv.bias'] = 0.1 * torch.randn(cout, generator=gen)
    return out


def layer(prefix, *shape, gen=None):
    return {f'{prefix}.weight': torch.randn(*shape, generator=gen) * 0.05,
            f'{prefix}.bias': 0.1 * torch.randn(shape[0], generator=gen)}


def mmdet2_fpn_rpn(in_channels, width=256, gen=None):
    """FPN (1x1 lateral, 3x3 output convs) and the RPN of mmdet 2.x, 3 anchors."""
    out = {}
    for i, cin in enumerate(in_channels):
        out.update(conv_module(f'neck.lateral_convs.{i}', cin, width, 1, gen=gen))
        out.update(conv_module(f'neck.fpn_convs.{i}', width, width, 3, gen=gen))
    out.update(layer('rpn_head.rpn_conv', width, width, 3, 3, gen=gen))
    out.update(layer('rpn_head.rpn_cls', 3, width, 1, 1, gen=gen))
    out.update(layer('rpn_head.rpn_reg', 12, width, 1, 1, gen=gen))
    return out


def mmdet2_mask_head(prefix, num_classes, width=256, gen=None):
    """FCNMaskHead: 4 3x3 convs, a 2x deconv, 1x1 logits."""
    out = {}
    for i in range(4):
        out.update(conv_module(f'{prefix}.convs.{i}', width, width, 3, gen=gen))
    out.update(layer(f'{prefix}.upsample', width, width, 2, 2, gen=gen))
    out.update(layer(f'{prefix}.conv_logits', num_classes, width, 1, 1, gen=gen))
    return out


def mmdet2_cascade_mask_rcnn(in_channels, num_classes=80, width=256, fc=1024, seed=1):
    """The authors' Cascade Mask R-CNN (Swin's 4conv1fc GIoU config), mmdet 2.x keys."""
    gen = torch.Generator().manual_seed(seed)
    out = mmdet2_fpn_rpn(in_channels, width, gen)
    for s in range(3):
        head = f'roi_head.bbox_head.{s}'
        for i in range(4):
            out.update(conv_module(f'{head}.shared_convs.{i}', width, width, 3, norm=True,
                                   gen=gen))
        out.update(layer(f'{head}.shared_fcs.0', fc, width * 49, gen=gen))
        out.update(layer(f'{head}.fc_cls', num_classes + 1, fc, gen=gen))
        out.update(layer(f'{head}.fc_reg', 4 * num_classes, fc, gen=gen))
        out.update(mmdet2_mask_head(f'roi_head.mask_head.{s}', num_classes, width, gen))
    return out


def mmdet2_mask_rcnn(in_channels, num_classes=80, width=256, fc=1024, seed=1):
    """mmdet 2.x Mask R-CNN with the Shared2FC box head."""
    gen = torch.Generator().manual_seed(seed)
    out = mmdet2_fpn_rpn(in_channels, width, gen)
    out.update(layer('roi_head.bbox_head.shared_fcs.0', fc, width * 49, gen=gen))
    out.update(layer('roi_head.bbox_head.shared_fcs.1', fc, fc, gen=gen))
    out.update(layer('roi_head.bbox_head.fc_cls', num_classes + 1, fc, gen=gen))
    out.update(layer('roi_head.bbox_head.fc_reg', 4 * num_classes, fc, gen=gen))
    out.update(mmdet2_mask_head('roi_head.mask_head', num_classes, width, gen))
    return out


def mmseg0_upernet(in_channels, num_classes=150, width=512, aux_width=256, seed=2):
    """The authors' UperNet (PPM 1-2-3-6, SyncBN) + FCN auxiliary head on stage 3."""
    gen = torch.Generator().manual_seed(seed)
    out, head = {}, 'decode_head'
    for i in range(4):
        out.update(conv_module(f'{head}.psp_modules.{i}.1', in_channels[-1], width, 1,
                               norm=True, gen=gen))
    out.update(conv_module(f'{head}.bottleneck', in_channels[-1] + 4 * width, width, 3,
                           norm=True, gen=gen))
    for i, cin in enumerate(in_channels[:-1]):
        out.update(conv_module(f'{head}.lateral_convs.{i}', cin, width, 1, norm=True,
                               gen=gen))
        out.update(conv_module(f'{head}.fpn_convs.{i}', width, width, 3, norm=True, gen=gen))
    out.update(conv_module(f'{head}.fpn_bottleneck', 4 * width, width, 3, norm=True, gen=gen))
    out.update(layer(f'{head}.conv_seg', num_classes, width, 1, 1, gen=gen))
    out.update(conv_module('auxiliary_head.convs.0', in_channels[2], aux_width, 3, norm=True,
                           gen=gen))
    out.update(layer('auxiliary_head.conv_seg', num_classes, aux_width, 1, 1, gen=gen))
    return out


def with_prefix(prefix, state):
    return OrderedDict((prefix + k, v) for k, v in state.items())


# ----------------------------------------------------------------- classification
@pytest.mark.parametrize('embed_dims', [7, 3])  # uneven groups; 3 < 5: empty groups
def test_cls_custom_arch_matches_published_logits(tmp_path, embed_dims):
    depths = (1, 1, 2, 1)
    ref = published(embed_dims, depths, num_classes=5)
    src = save(tmp_path, 'pub.pth', {'model': ref.state_dict()})
    dst = str(tmp_path / 'out' / 'ours.pth')
    summary = conv.convert(src, dst, log=lambda *a: None)
    assert summary['task'] == 'cls'
    assert summary['arch']['embed_dims'] == embed_dims
    assert summary['arch']['depths'] == list(depths)
    assert summary['arch']['preset'] is None
    ckpt = torch.load(dst, weights_only=True)
    assert set(ckpt['meta']) >= {'converted_from', 'arch', 'task'}
    assert all(k.startswith(('backbone.', 'head.fc.')) for k in ckpt['state_dict'])

    model = build_model_from_config(tiny_cls_config(tmp_path, embed_dims, depths, 5))
    model.load_state_dict(ckpt['state_dict'], strict=True)
    x = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x, mode='tensor'), ref(x),
                                   rtol=1e-5, atol=1e-5)


def test_cls_asmlp_t_through_the_command_line(tmp_path, capsys):
    ref = published(96, (2, 2, 6, 2), num_classes=1000)
    src = save(tmp_path, 'asmlp_tiny.pth', {'model': ref.state_dict()})
    dst = str(tmp_path / 'asmlp-tiny_in1k.pth')
    conv.main([src, dst, '--config', CLS_TINY])
    out = capsys.readouterr().out
    assert 'AS-MLP-T' in out and 'verified' in out
    model = build_model_from_config(CLS_TINY).eval()
    model.load_state_dict(torch.load(dst, weights_only=True)['state_dict'], strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, mode='tensor'), ref(x), rtol=1e-5, atol=1e-5)


def test_wrong_arch_fails_naming_the_mismatch(tmp_path):
    ref = published(8, (1, 1, 2, 1), num_classes=1000)
    src = save(tmp_path, 'pub.pth', {'model': ref.state_dict()})
    with pytest.raises(conv.ConversionError) as err:
        conv.convert(src, str(tmp_path / 'o.pth'), config=CLS_TINY, log=lambda *a: None)
    text = str(err.value)
    assert 'embed_dims=8' in text and 'embed_dims=96' in text
    assert 'shape of backbone.patch_embed.proj.weight: (8, 3, 4, 4) in the checkpoint' in text
    # T has 2 blocks in stage 0, this one 1: blocks missing besides every shape
    assert 'missing in the checkpoint: backbone.stages.0.blocks.1.' in text
    assert re.search(r'does not fit .*: 256 problem\(s\)', text)
    assert not (tmp_path / 'o.pth').exists()


def test_missing_key_fails_naming_it(tmp_path):
    state = published(8, (1, 1, 1, 1), num_classes=3).state_dict()
    del state['layers.1.blocks.0.axial_shift.conv3.weight']
    src = save(tmp_path, 'pub.pth', {'model': state})
    with pytest.raises(conv.ConversionError, match=r'stages\.1\.blocks\.0\.token_mixer\.'
                       r'proj_out\.weight'):
        conv.convert(src, str(tmp_path / 'o.pth'), log=lambda *a: None)


def test_missing_block_and_empty_checkpoints_fail(tmp_path):
    state = published(8, (1, 1, 2, 1), num_classes=3).state_dict()
    gap = {k: v for k, v in state.items() if not k.startswith('layers.2.blocks.0.')}
    with pytest.raises(conv.ConversionError, match=r'stage 2 misses blocks \[0\]'):
        conv.convert(save(tmp_path, 'gap.pth', {'model': gap}), str(tmp_path / 'o.pth'),
                     log=lambda *a: None)
    no_stage = {k: v for k, v in state.items() if not k.startswith('layers.3.')}
    with pytest.raises(conv.ConversionError, match='4 stages'):
        conv.convert(save(tmp_path, 'three.pth', {'model': no_stage}),
                     str(tmp_path / 'o.pth'), log=lambda *a: None)
    with pytest.raises(conv.ConversionError, match='no parameters'):
        conv.convert(save(tmp_path, 'empty.pth', {'model': {}}), str(tmp_path / 'o.pth'),
                     task='cls', log=lambda *a: None)
    (tmp_path / 'junk.pth').write_text('not a checkpoint')
    with pytest.raises(SystemExit, match='cannot load') as err:
        conv.main([str(tmp_path / 'junk.pth'), str(tmp_path / 'o.pth')])
    assert 'Traceback' not in str(err.value)


def test_a_checkpoint_that_pickles_objects_converts_as_it_is(tmp_path, capsys):
    """A training checkpoint whose config entry pickles an object (the authors' yacs node;
    here an argparse.Namespace) converts without any flag: the object is not unpickled.
    --unsafe-load, which it needed before, is still accepted, and said to do nothing."""
    import argparse
    state = published(8, (1, 1, 1, 1), num_classes=3).state_dict()
    src = save(tmp_path, 'train.pth', {'model': state, 'config': argparse.Namespace(a=1)})
    lines = []
    summary = conv.convert(src, str(tmp_path / 'o.pth'), log=lines.append)
    assert summary['task'] == 'cls'
    assert "dropped top-level entries (training state): ['config']" in lines
    conv.main([src, str(tmp_path / 'o2.pth'), '--unsafe-load'])
    assert '--unsafe-load is deprecated and does nothing' in capsys.readouterr().err
    first, second = (torch.load(tmp_path / name, weights_only=True)['state_dict']
                     for name in ('o.pth', 'o2.pth'))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_odd_but_convertible_checkpoints(tmp_path):
    """A meta that is not a dict is dropped (it was an AttributeError); the keys of a model
    saved inside DistributedDataParallel lose their 'module.' (they asked for --task)."""
    model = published(8, (1, 1, 1, 1), num_classes=3)
    state = model.state_dict()
    src = save(tmp_path, 'odd.pth', {'model': {'module.' + k: v for k, v in state.items()},
                                     'meta': 'trained on 8 GPUs'})
    logged = []
    summary = conv.convert(src, str(tmp_path / 'o.pth'), log=logged.append)
    assert summary['task'] == 'cls'
    assert "dropped top-level entries (training state): ['meta']" in logged
    converted = torch.load(tmp_path / 'o.pth', weights_only=True)['state_dict']
    assert torch.equal(converted['backbone.patch_embed.proj.weight'],
                       state['patch_embed.proj.weight'])


def test_destination_of_a_folder_or_the_source_is_refused(tmp_path):
    state = published(8, (1, 1, 1, 1), num_classes=3).state_dict()
    src = save(tmp_path, 'pub.pth', {'model': state})
    before = (tmp_path / 'pub.pth').read_bytes()
    with pytest.raises(conv.ConversionError, match='is the source checkpoint'):
        conv.convert(src, src, log=lambda *a: None)
    with pytest.raises(SystemExit, match='is a folder'):
        conv.main([src, str(tmp_path)])
    (tmp_path / 'file').write_text('')
    with pytest.raises(SystemExit, match="'.*file' is not a writable folder"):
        conv.main([src, str(tmp_path / 'file' / 'out.pth')])  # a traceback after the work
    with pytest.raises(SystemExit, match='no file name given'):
        conv.main([src, ''])
    assert (tmp_path / 'pub.pth').read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['file', 'pub.pth']


def test_an_already_converted_checkpoint_is_recognized(tmp_path):
    state = published(8, (1, 1, 1, 1), num_classes=3).state_dict()
    src = save(tmp_path, 'pub.pth', {'model': state})
    conv.convert(src, str(tmp_path / 'ours.pth'), log=lambda *a: None)
    with pytest.raises(conv.ConversionError, match='already in the asmlp-mm layout'):
        conv.convert(str(tmp_path / 'ours.pth'), str(tmp_path / 'again.pth'),
                     log=lambda *a: None)
    assert not (tmp_path / 'again.pth').exists()


def test_unmapped_keys_are_reported(tmp_path):
    state = published(8, (1, 1, 1, 1), num_classes=3).state_dict()
    state['layers.0.blocks.0.axial_shift.gate.weight'] = torch.zeros(8, 8, 1, 1)
    state['pos_embed'] = torch.zeros(1, 8)
    src = save(tmp_path, 'pub.pth', {'model': state, 'optimizer': {}, 'epoch': 300})
    with pytest.raises(conv.ConversionError, match='pos_embed') as err:
        conv.convert(src, str(tmp_path / 'o.pth'), log=lambda *a: None)
    assert 'axial_shift.gate.weight' in str(err.value)
    lines = []
    conv.convert(src, str(tmp_path / 'o.pth'), drop_unmapped=True, log=lines.append)
    meta = torch.load(str(tmp_path / 'o.pth'), weights_only=True)['meta']
    assert sorted(meta['dropped_keys']) == ['layers.0.blocks.0.axial_shift.gate.weight',
                                            'pos_embed']
    assert any("['epoch', 'optimizer']" in line for line in lines)


# ----------------------------------------------------------------- detection, segmentation
def tiny_override(tmp_path, base, embed_dims, name, seg=False):
    dims = [embed_dims * 2**i for i in range(4)]
    path = tmp_path / name
    head = (f'decode_head=dict(in_channels={dims}), auxiliary_head=dict(in_channels={dims[2]})'
            if seg else f'neck=dict(in_channels={dims})')
    path.write_text(
        f"_base_ = '{base}'\n"
        f"model = dict(backbone=dict(arch=dict(_delete_=True, embed_dims={embed_dims}, "
        f"depths=[1, 1, 1, 1])), {head})\n")
    return str(path)


def check_dense_conversion(tmp_path, base, heads_fn, prefix_task, seg=False):
    embed_dims = 10
    dims = [embed_dims * 2**i for i in range(4)]
    backbone = published(embed_dims, (1, 1, 1, 1), out_indices=(0, 1, 2, 3))
    heads = heads_fn(dims)
    state = OrderedDict(with_prefix('backbone.', backbone.state_dict()))
    state.update(heads)
    meta = dict(CLASSES=('a', 'b'), mmdet_version='2.11.0')
    src = save(tmp_path, 'pub.pth', dict(state_dict=state, meta=meta, optimizer={}))
    config = tiny_override(tmp_path, base, embed_dims, 'tiny.py', seg)
    dst = str(tmp_path / 'ours.pth')
    summary = conv.convert(src, dst, config=config, log=lambda *a: None)
    assert summary['task'] == prefix_task and summary['unmapped'] == []
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt['meta']['dataset_meta'] == {'classes': ('a', 'b')}
    converted = ckpt['state_dict']

    model = build_model_from_config(Config.fromfile(config)).eval()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    for key, value in heads.items():  # heads keep their names and values
        assert torch.equal(converted[key], value)
    model.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        for a, b in zip(model.backbone(x), backbone(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_packages('mmdet')
def test_det_cascade_mmdet2_to_mmdet3(tmp_path):
    check_dense_conversion(
        tmp_path, CASCADE_NARROW,
        lambda dims: mmdet2_cascade_mask_rcnn(dims, num_classes=3, width=32, fc=128), 'det')


@needs_packages('mmdet')
def test_det_mask_rcnn_mmdet2_to_mmdet3(tmp_path):
    check_dense_conversion(tmp_path, MASK_T, mmdet2_mask_rcnn, 'det')


@needs_packages('mmseg')
def test_seg_upernet_mmseg0_to_mmseg1(tmp_path):
    check_dense_conversion(tmp_path, UPERNET_T, mmseg0_upernet, 'seg', seg=True)


@needs_packages('mmdet')
def test_det_against_wrong_config_fails(tmp_path):
    dims = [10 * 2**i for i in range(4)]
    state = OrderedDict(with_prefix('backbone.', published(
        10, (1, 1, 1, 1), out_indices=(0, 1, 2, 3)).state_dict()))
    state.update(mmdet2_mask_rcnn(dims))  # Mask R-CNN heads, Cascade config
    src = save(tmp_path, 'pub.pth', dict(state_dict=state))
    config = tiny_override(tmp_path, CASCADE_NARROW, 10, 'tiny.py')
    with pytest.raises(conv.ConversionError) as err:
        conv.convert(src, str(tmp_path / 'o.pth'), config=config, log=lambda *a: None)
    assert 'roi_head.bbox_head.0.shared_convs.0.conv.weight' in str(err.value)
    assert 'roi_head.bbox_head.shared_fcs.1.weight' in str(err.value)
    # without a config, a custom arch is checked on the backbone only, and says so
    lines = []
    conv.convert(src, str(tmp_path / 'o.pth'), log=lines.append)
    assert any('pass --config' in line for line in lines)


PUBLISH = osp.join(ROOT, 'tools', 'model_converters', 'publish_model.py')
WEIGHTS_ONLY_LOAD = ('import sys, torch; torch.load(sys.argv[1], weights_only=True); '
                     'print("asmlp_mm" in sys.modules)')


def training_checkpoint(path):
    """A checkpoint as mmengine's Runner saves it: weights, meta, and the run's state (the
    message hub's HistoryBuffers with numpy arrays, the optimizer's)."""
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('publish_test')
    for loss in (1.0, 0.5):
        hub.update_scalar('train/loss', loss)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    torch.save({'meta': {'epoch': 2, 'iter': 8, 'cfg': "model = dict(type='X')",
                         'dataset_meta': {'classes': ('a', 'b'), 'palette': [[1, 2, 3]]}},
                'state_dict': model.state_dict(), 'message_hub': hub.state_dict(),
                'optimizer': optimizer.state_dict(), 'param_schedulers': []}, path)
    return model.state_dict()


def test_publish_model_keeps_weights_and_meta_for_loaders_without_asmlp_mm(tmp_path):
    """DetInferencer(model=None, weights=...) reads the checkpoint before any config, so
    before asmlp_mm allow-lists mmengine's training state for torch's weights-only load:
    a checkpoint of tools/train.py failed there. Its published form loads with plain
    torch.load(weights_only=True), named with its hash."""
    import hashlib
    import subprocess
    import sys
    source = tmp_path / 'epoch_2.pth'
    weights = training_checkpoint(source)

    def plain_load(path):
        return subprocess.run([sys.executable, '-c', WEIGHTS_ONLY_LOAD, str(path)],
                              capture_output=True, text=True)

    # the failure fixed here ('Unsupported class' before torch 2.4, 'Unsupported global' since)
    assert 'Unsupported' in plain_load(source).stderr
    result = subprocess.run([sys.executable, PUBLISH, str(source), str(tmp_path / 'out.pth')],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'dropped: message_hub, optimizer, param_schedulers' in result.stdout
    [published] = tmp_path.glob('out-*.pth')
    assert published.name == f'out-{hashlib.sha256(published.read_bytes()).hexdigest()[:8]}.pth'
    assert result.stdout.strip().endswith(f'wrote {published}')
    loaded = plain_load(published)
    assert loaded.returncode == 0 and loaded.stdout.strip() == 'False', loaded.stderr[-2000:]
    checkpoint = torch.load(published, weights_only=True)
    assert sorted(checkpoint) == ['meta', 'state_dict']
    assert checkpoint['meta']['dataset_meta']['classes'] == ('a', 'b')
    for key, value in weights.items():
        assert torch.equal(checkpoint['state_dict'][key], value)


def test_publish_model_refuses_what_is_not_a_training_checkpoint(tmp_path):
    import subprocess
    import sys
    bare = tmp_path / 'bare.pth'
    torch.save(nn.Linear(2, 2).state_dict(), bare)
    empty = tmp_path / 'empty.pth'
    torch.save({'state_dict': {}, 'meta': {}}, empty)
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': nn.Linear(2, 2).state_dict(), 'meta': {}}, good)
    numpy_meta = tmp_path / 'numpy_meta.pth'
    torch.save({'state_dict': nn.Linear(2, 2).state_dict(), 'meta': {'x': np.zeros(2)}},
               numpy_meta)

    (tmp_path / 'file').write_text('')
    out = str(tmp_path / 'o.pth')
    for source, target, message in (
            (bare, out, 'has no state_dict'),
            (tmp_path / 'none.pth', out, 'does not exist'),
            (empty, out, 'state_dict is empty'),
            (good, str(tmp_path / 'o.pt'), 'suffixes .pth'),
            (good, '', 'no file name given'),
            (good, str(tmp_path / 'file' / 'o.pth'), 'is not a writable folder'),
            (numpy_meta, out, 'still does not load weights-only: Unsupported ')):
        result = subprocess.run([sys.executable, PUBLISH, str(source), target],
                                capture_output=True, text=True)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
        assert 'Traceback' not in result.stderr
    assert not list(tmp_path.glob('o*')) and not list(tmp_path.glob('-*'))


def test_publish_model_refuses_a_meta_with_objects_the_reader_left_out(tmp_path):
    """They could not be saved again (and a plain weights-only load would refuse them):
    the message names where they are."""
    import argparse

    from asmlp_mm.checkpoint_io import CheckpointError, load_local_checkpoint
    publish_model = load_tool('model_converters/publish_model.py')
    path = tmp_path / 'foreign_meta.pth'
    torch.save({'state_dict': nn.Linear(2, 2).state_dict(),
                'meta': {'args': argparse.Namespace(a=1)}}, path)
    with pytest.raises(CheckpointError, match=r"checkpoint\['meta'\]\['args'\] is an object "
                       r"of argparse\.Namespace, which asmlp_mm's reader does not unpickle"):
        publish_model.published(load_local_checkpoint(path), str(path))
