"""Mixed precision as released: AmpOptimWrapper configs (ImageNet, COCO) and where they meet
a machine without CUDA, asmlp_mm.runtime.AmpFallbackOptimWrapperConstructor."""
import os
import os.path as osp

import pytest
import torch
from helpers import run_tool
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.optim import AmpOptimWrapper, OptimWrapper, build_optim_wrapper
from mmengine.registry import DefaultScope

from asmlp_mm.runtime import AutocastOptimWrapper, enable_amp

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(ROOT, 'configs')
FALLBACK = 'AmpFallbackOptimWrapperConstructor'
#: the start of the line the constructor logs where it falls back
LOG_LINE = 'AmpOptimWrapper needs a CUDA, NPU, MLU or MUSA device and there is none'


class Parts(torch.nn.Module):
    """A model with the submodules of a detector (not an mmdet model)."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Linear(4, 4)
        self.neck = torch.nn.Linear(4, 4)
        self.rpn_head = torch.nn.Linear(4, 2)


def mmdet_detector():
    """The same, as an mmdet detector (a subclass of mmdet's BaseDetector)."""
    from mmdet.models.detectors.base import BaseDetector

    class Detector(BaseDetector):
        loss = predict = _forward = extract_feat = None

        def __init__(self):
            super().__init__()
            self.backbone, self.neck, self.rpn_head = Parts().children()

    return Detector()


def amp_cfg(**kwargs):
    return dict(dict(type='AmpOptimWrapper', loss_scale='dynamic', constructor=FALLBACK,
                     optimizer=dict(type='SGD', lr=0.1), clip_grad=dict(max_norm=1.)),
                **kwargs)


def logged(tmp_path, build, before=lambda: None):
    """``build()``'s result and the lines it logged to the current mmengine logger;
    ``before()`` runs once the logger is set up."""
    log_file = tmp_path / 'run.log'
    MMLogger.get_instance(f'test_amp_{tmp_path.name}', log_file=str(log_file))
    before()
    result = build()
    return result, log_file.read_text().splitlines()


@pytest.mark.parametrize('detector, modules', [(True, ['backbone', 'neck']), (False, None)])
def test_amp_config_becomes_bfloat16_autocast_without_cuda(monkeypatch, tmp_path, detector,
                                                           modules):
    """Without a device for AmpOptimWrapper: bfloat16 autocast without loss scaling, of the
    backbone and the neck only for mmdet models (mmcv's CPU nms and RoIAlign take float32),
    said once in the log; the other wrapper arguments stay. What counts is the model, not
    the default scope left by another run."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    model = mmdet_detector() if detector else Parts()
    with DefaultScope.overwrite_default_scope('mmpretrain' if detector else 'mmdet'):
        wrapper, lines = logged(tmp_path, lambda: build_optim_wrapper(model, amp_cfg()))
    assert type(wrapper) is AutocastOptimWrapper
    assert wrapper.cast_dtype == torch.bfloat16 and wrapper.modules == modules
    assert wrapper.clip_grad_kwargs == dict(max_norm=1.)
    assert sum(LOG_LINE in line for line in lines) == 1
    part = 'backbone and neck' if modules else 'the whole model'
    assert any(f'bfloat16 autocast of {part}' in line for line in lines)
    # and it trains: a step under the wrapper's autocast changes the weights
    before = model.backbone.weight.detach().clone()
    with wrapper.optim_context(model):
        out = model.rpn_head(model.neck(model.backbone(torch.randn(3, 4))))
    wrapper.update_params(out.float().square().mean())
    assert not torch.equal(before, model.backbone.weight)


def test_amp_config_stays_amp_where_amp_runs(monkeypatch, tmp_path):
    """Where mmengine's AmpOptimWrapper runs, the config is built as it is, silently."""
    wrapper, lines = logged(
        tmp_path, lambda: build_optim_wrapper(torch.nn.Linear(4, 2), amp_cfg()),
        # (after the logger: mmengine's looks for the CUDA device of the process)
        before=lambda: monkeypatch.setattr(torch.cuda, 'is_available', lambda: True))
    assert type(wrapper) is AmpOptimWrapper
    assert not any(LOG_LINE in line for line in lines)


@pytest.mark.parametrize('kind, wrapper_type', [('OptimWrapper', OptimWrapper),
                                                ('AutocastOptimWrapper', AutocastOptimWrapper)])
def test_a_config_switched_from_amp_leaves_out_the_amp_arguments(kind, wrapper_type):
    """optim_wrapper.type=OptimWrapper (float32) over an AMP config: the inherited
    loss_scale (and dtype, for OptimWrapper) are left out, not a TypeError."""
    cfg = amp_cfg(type=kind, dtype='bfloat16', use_fsdp=False)
    wrapper = build_optim_wrapper(torch.nn.Linear(4, 2), cfg)
    assert type(wrapper) is wrapper_type
    assert wrapper.clip_grad_kwargs == dict(max_norm=1.)


def test_enable_amp_asks_for_amp_through_the_fallback_constructor(monkeypatch):
    """--amp: an OptimWrapper config becomes AmpOptimWrapper with a dynamic loss scale and
    the fallback constructor; a config's own loss scale and an autocast config are kept."""
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD'))))
    enable_amp(cfg)
    assert cfg.optim_wrapper.to_dict() == dict(
        type='AmpOptimWrapper', loss_scale='dynamic', constructor=FALLBACK,
        optimizer=dict(type='SGD'))
    cfg = Config(dict(optim_wrapper=amp_cfg(loss_scale=512.)))
    enable_amp(cfg)
    assert cfg.optim_wrapper.loss_scale == 512.
    cfg = Config(dict(optim_wrapper=dict(type='AutocastOptimWrapper', dtype='float16',
                                         optimizer=dict(type='SGD'))))
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'AutocastOptimWrapper'
    # another constructor cannot fall back: refused without CUDA, kept with it
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD'),
                                         constructor='LayerDecayOptimWrapperConstructor')))
    with pytest.raises(ValueError, match='LayerDecayOptimWrapperConstructor'):
        enable_amp(cfg)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.constructor == 'LayerDecayOptimWrapperConstructor'
    with pytest.raises(ValueError, match='supports OptimWrapper configs'):
        enable_amp(Config(dict(optim_wrapper=dict(type='ApexOptimWrapper'))))


AMP = ('AmpOptimWrapper', 'dynamic')
FLOAT32 = ('OptimWrapper', None)


@pytest.mark.parametrize('config, kind', [
    ('asmlp/asmlp-tiny_8xb128_in1k.py', AMP),
    ('asmlp/asmlp-small_8xb128_in1k.py', AMP),
    ('asmlp/asmlp-base_8xb128_in1k.py', AMP),
    ('asmlp/asmlp-base_8xb128_in1k-384px.py', AMP),
    ('cascade_mask_rcnn/cascade-mask-rcnn_asmlp-tiny_fpn_ms-crop-1x_coco.py', AMP),
    ('cascade_mask_rcnn/cascade-mask-rcnn_asmlp-base_fpn_ms-crop-3x_coco.py', AMP),
    ('mask_rcnn/mask-rcnn_asmlp-small_fpn_ms-crop-3x_coco.py', AMP),
    ('upernet/upernet_asmlp-tiny_8xb2-160k_ade20k-512x512.py', FLOAT32),
    ('upernet/upernet_asmlp-base_8xb2-160k_ade20k-512x512.py', FLOAT32),
    # the CPU demos: float32, over the loss scale they inherit from the AMP configs
    ('demo/asmlp-demo_1xb8_shapes-cls.py', ('OptimWrapper', 'dynamic')),
    ('demo/cascade-mask-rcnn_asmlp-demo_fpn_shapes-coco.py', ('OptimWrapper', 'dynamic')),
    ('demo/upernet_asmlp-demo_shapes-ade.py', FLOAT32),
])
def test_configs_precision(config, kind):
    """ImageNet and COCO in mixed precision with a dynamic loss scale, as released (apex
    O1); ADE20K in float32, as released; the CPU demos in float32. Every one through the
    fallback constructor."""
    wrapper = Config.fromfile(osp.join(CONFIGS, config)).optim_wrapper
    assert (wrapper.type, wrapper.get('loss_scale')) == kind
    assert wrapper.constructor == FALLBACK


def cpu_env():
    return dict(os.environ, CUDA_VISIBLE_DEVICES='')


def test_amp_config_trains_on_cpu_through_train_py(tmp_path):
    """The classification demo with the ImageNet configs' AmpOptimWrapper trains (two
    epochs of three batches) on CPU through tools/train.py, in bfloat16 autocast, and says
    so once in the log."""
    from asmlp_mm.datasets import make_classification_folder
    data = tmp_path / 'shapes_cls'
    make_classification_folder(str(data), num_train=8, num_val=2, size=32)
    work = tmp_path / 'work'
    out = run_tool(osp.join(ROOT, 'tools', 'train.py'),
                   osp.join(CONFIGS, 'demo', 'asmlp-demo_1xb8_shapes-cls.py'),
                   '--work-dir', str(work), '--cfg-options', 'optim_wrapper.type=AmpOptimWrapper',
                   *[f'{loader}.dataset.data_root={data}' for loader in (
                       'train_dataloader', 'val_dataloader', 'test_dataloader')],
                   'train_cfg.max_epochs=2', 'train_cfg.val_interval=2',
                   cwd=tmp_path, env=cpu_env(), threads=1)
    assert out.count(LOG_LINE) == 1, out[-3000:]
    assert 'bfloat16 autocast of the whole model' in out
    assert (work / 'epoch_2.pth').is_file()


def test_mmdets_own_train_tool_with_amp_on_cpu(tmp_path):
    """mmdet's packaged tools/train.py --amp (which sets type='AmpOptimWrapper') trains the
    detection demo on CPU: bfloat16 autocast of the backbone and the neck, said once."""
    import mmdet

    from asmlp_mm.datasets.shapes import annotation_file, make_coco_dataset
    tool = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    root = make_coco_dataset(str(tmp_path / 'shapes_coco'), num_train=2, num_val=1,
                             size=64).rstrip('/') + '/'
    work = tmp_path / 'work'
    env = dict(cpu_env(), PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    demo = osp.join(CONFIGS, 'demo', 'cascade-mask-rcnn_asmlp-demo_fpn_shapes-coco.py')
    out = run_tool(tool, demo, '--amp', '--work-dir', str(work), '--cfg-options',
                   *[f'{loader}.dataset.data_root={root}' for loader in (
                       'train_dataloader', 'val_dataloader', 'test_dataloader')],
                   *[f'{evaluator}.ann_file={annotation_file(root, "val")}'
                     for evaluator in ('val_evaluator', 'test_evaluator')],
                   'train_cfg.max_epochs=1', 'train_cfg.val_interval=2',  # no validation
                   cwd=tmp_path, env=env, threads=1)
    assert out.count(LOG_LINE) == 1, out[-3000:]
    assert 'bfloat16 autocast of backbone and neck' in out
    assert (work / 'epoch_1.pth').is_file()
