"""The checkpoint reader (asmlp_mm.checkpoint_io) and the authors' files as they are.

The authors' classifier files pickle a yacs ``CfgNode`` (a dict subclass with attributes)
and apex's amp state beside the weights; :class:`CfgNode` below pickles as yacs' does.
"""
import logging
import os
import sys
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.runner.checkpoint import CheckpointLoader, load_checkpoint

from asmlp_mm.checkpoint_io import (CheckpointError, CheckpointMismatchError, ForeignObject,
                                    describe_mismatches, foreign_objects,
                                    load_local_checkpoint, load_url_checkpoint,
                                    state_dict_mismatches)
from asmlp_mm.models import ASMLP
from asmlp_mm.models.published import PublishedASMLP
# applies the run-time fixes, mmengine's checkpoint schemes among them
from asmlp_mm.runtime.checkpoints import load_from_http, load_from_local

from test_converters import MASK_T, conv, mmdet2_mask_rcnn


class CfgNode(dict):
    """Pickles as yacs' CfgNode: a dict subclass whose instance dict holds its flags."""

    def __init__(self, entries=None):
        super().__init__(entries or {})
        self.__dict__['__immutable__'] = True


class Payload:
    """What a malicious file pickles: its unpickling is a call of ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class Recorder:
    """A foreign class with state (BUILD) and constructor arguments (NEWOBJ)."""

    def __new__(cls, *args):
        return super().__new__(cls)

    def __init__(self, value):
        self.value = value

    def __getnewargs__(self):
        return (self.value, )


def logged_messages():
    """A list that collects the messages of mmengine's current logger, and the handler to
    remove afterwards."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    MMLogger.get_current_instance().addHandler(handler)
    return records, handler


# ----------------------------------------------------------------------------- the reader
def test_a_malicious_reduce_does_not_run_and_its_module_is_not_imported(tmp_path):
    """Nothing a file names is imported or called: not os.system, not builtins.exec, not a
    module that is importable here (its import would write a file)."""
    marker = tmp_path / 'ran'
    module = tmp_path / 'evil_module_on_import.py'
    module.write_text(f'open({str(tmp_path / "imported")!r}, "w").close()\n'
                      'def payload(path):\n    open(path, "w").close()\n')
    sys.path.insert(0, str(tmp_path))
    try:
        import evil_module_on_import
        (tmp_path / 'imported').unlink()
        path = tmp_path / 'evil.pth'
        torch.save({'state_dict': {'w': torch.ones(2)},
                    'a': Payload(os.system, f'touch {marker}'),
                    'b': Payload(exec, f'open({str(marker)!r}, "w").close()'),
                    'c': Payload(evil_module_on_import.payload, str(marker))}, path)
        del sys.modules['evil_module_on_import']

        checkpoint = load_local_checkpoint(path)
        assert not marker.exists() and not (tmp_path / 'imported').exists()
        assert 'evil_module_on_import' not in sys.modules
        assert torch.equal(checkpoint['state_dict']['w'], torch.ones(2))
        for key, fn in (('a', os.system), ('b', exec),
                        ('c', evil_module_on_import.payload)):
            assert isinstance(checkpoint[key], ForeignObject)
            assert checkpoint[key].pickled_global == f'{fn.__module__}.{fn.__name__}'
        assert checkpoint['a'].args == (f'touch {marker}', )
        # the file is what it claims: a full unpickling imports the module and runs it
        torch.load(path, weights_only=False)
        assert marker.exists() and (tmp_path / 'imported').exists()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop('evil_module_on_import', None)


def test_a_foreign_class_loads_as_a_placeholder_that_records_it(tmp_path):
    """Objects of classes outside tensors and plain data (a yacs-like config, a class of
    this module) become ForeignObjects that keep their arguments, state and items, and
    one log line names them; tensors, plain data and numpy values come back as they are."""
    config = CfgNode({'MODEL': CfgNode({'NAME': 'asmlp_tiny'}), 'TRAIN': [1, 2]})
    weights = {'w': torch.randn(3, 2)}
    path = tmp_path / 'foreign.pth'
    torch.save({'model': weights, 'config': config, 'obj': Recorder(7), 'cls': Recorder,
                'seed': np.int64(5), 'curve': np.arange(3.), 'amp': OrderedDict(
                    loss_scaler0={'loss_scale': 65536.0, 'unskipped': 0})}, path)
    records, handler = logged_messages()
    try:
        checkpoint = load_local_checkpoint(path)
    finally:
        MMLogger.get_current_instance().removeHandler(handler)
    node = checkpoint['config']
    assert isinstance(node, ForeignObject) and not isinstance(node, dict)
    assert node.pickled_global == f'{__name__}.CfgNode'
    assert node.state == {'__immutable__': True}
    assert node.entries['TRAIN'] == [1, 2]
    assert node.entries['MODEL'].entries == {'NAME': 'asmlp_tiny'}
    recorder = checkpoint['obj']
    assert recorder.pickled_global == f'{__name__}.Recorder'
    assert recorder.args == (7, ) and recorder.state == {'value': 7}
    assert issubclass(checkpoint['cls'], ForeignObject)
    assert checkpoint['seed'] == 5 and type(checkpoint['seed']) is np.int64
    np.testing.assert_array_equal(checkpoint['curve'], np.arange(3.))
    assert checkpoint['amp'] == {'loss_scaler0': {'loss_scale': 65536.0, 'unskipped': 0}}
    assert torch.equal(checkpoint['model']['w'], weights['w'])
    assert sorted(pickled for _, pickled in foreign_objects(checkpoint)) == [
        f'{__name__}.CfgNode', f'{__name__}.Recorder', f'{__name__}.Recorder']
    lines = [r.getMessage() for r in records if 'not unpickled' in r.getMessage()]
    assert len(lines) == 1
    assert f'{__name__}.CfgNode' in lines[0] and f'{__name__}.Recorder' in lines[0]
    with pytest.raises(TypeError, match='cannot pickle a stand-in for .*CfgNode'):
        torch.save(checkpoint, tmp_path / 'again.pth')


def test_what_is_no_checkpoint_is_refused(tmp_path):
    scripted = tmp_path / 'scripted.pt'
    with warnings.catch_warnings():  # torch deprecates TorchScript
        warnings.simplefilter('ignore', FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(scripted))
    with pytest.raises(CheckpointError, match='TorchScript archive'):
        load_local_checkpoint(scripted)
    (tmp_path / 'text.pth').write_text('not a checkpoint')
    with pytest.raises(CheckpointError, match='cannot load .* as a PyTorch checkpoint'):
        load_local_checkpoint(tmp_path / 'text.pth')
    torch.save({'w': torch.ones(1000)}, tmp_path / 'whole.pth')
    (tmp_path / 'cut.pth').write_bytes((tmp_path / 'whole.pth').read_bytes()[:2000])
    with pytest.raises(CheckpointError, match='cannot load'):
        load_local_checkpoint(tmp_path / 'cut.pth')


def test_urls_are_read_by_the_same_reader(tmp_path):
    """mmengine reads downloads with torch.hub.load_state_dict_from_url, which unpickles
    anything; the http(s) scheme is routed to the reader instead."""
    assert CheckpointLoader._get_checkpoint_loader('https://x.org/a.pth') is load_from_http
    assert CheckpointLoader._get_checkpoint_loader('/a/b.pth') is load_from_local
    marker = tmp_path / 'ran'
    source = tmp_path / 'served' / 'remote.pth'
    source.parent.mkdir()
    torch.save({'state_dict': {'w': torch.ones(2)},
                'x': Payload(exec, f'open({str(marker)!r}, "w").close()')}, source)
    cache = tmp_path / 'cache'
    checkpoint = load_url_checkpoint(source.as_uri(), model_dir=str(cache), progress=False)
    assert (cache / 'remote.pth').read_bytes() == source.read_bytes()
    assert isinstance(checkpoint['x'], ForeignObject) and not marker.exists()
    assert torch.equal(checkpoint['state_dict']['w'], torch.ones(2))


# ----------------------------------------------------------------------------- the authors' files
def randomized_state(model: torch.nn.Module, seed: int = 0) -> dict:
    """The state dict of ``model`` with every value random (norm scales near 1)."""
    gen = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (k, (1 if 'norm' in k and k.endswith('weight') else 0)
         + 0.1 * torch.randn(v.shape, generator=gen)) for k, v in model.state_dict().items())


def authors_classifier_file(path, state):
    """A checkpoint as the authors' utils.save_checkpoint writes it."""
    torch.save({'model': state, 'optimizer': {'state': {}, 'param_groups': []},
                'lr_scheduler': {'t_initial': 300}, 'max_accuracy': 81.3, 'epoch': 299,
                'config': CfgNode({'MODEL': CfgNode({'TYPE': 'asmlp'})}),
                'amp': OrderedDict(loss_scaler0={'loss_scale': 65536.0, 'unskipped': 0})},
               path)


def pretrained(checkpoint, prefix='backbone.'):
    return dict(type='Pretrained', checkpoint=str(checkpoint), prefix=prefix)


def distinct_state(model_cls, *args, **kwargs) -> dict:
    """The state dict of ``model_cls(*args, **kwargs)``, built without its initialization
    (on the meta device: AS-MLP-B has 88M parameters), its tensors consecutive parts of
    one ``arange``: no two hold the same values, so a key put in another's place shows."""
    with torch.device('meta'):
        shapes = [(k, v.shape) for k, v in model_cls(*args, **kwargs).state_dict().items()]
    values = torch.arange(sum(shape.numel() for _, shape in shapes), dtype=torch.float32)
    parts = values.split([shape.numel() for _, shape in shapes])
    return OrderedDict((k, part.view(shape)) for (k, shape), part in zip(shapes, parts))


@pytest.mark.parametrize('arch', ['tiny', 'base'])
def test_init_cfg_converts_the_authors_classifier_on_load(tmp_path, arch):
    """init_cfg given the authors' file loads what converting it first with
    tools/model_converters/asmlp_to_mm.py gives, and says so once in the log."""
    settings = ASMLP.arch_zoo[arch]
    state = distinct_state(PublishedASMLP, settings['embed_dims'], settings['depths'],
                           num_classes=10)
    source, converted = tmp_path / 'asmlp_published.pth', tmp_path / 'converted.pth'
    authors_classifier_file(source, state)
    conv.convert(str(source), str(converted), log=lambda *a: None)
    first = {k[len('backbone.'):]: v for k, v in torch.load(
        converted, weights_only=True)['state_dict'].items() if k.startswith('backbone.')}

    records, handler = logged_messages()
    try:
        on_load = ASMLP(arch, init_cfg=pretrained(source))
        on_load.init_weights()
    finally:
        MMLogger.get_current_instance().removeHandler(handler)
    said = [r.getMessage() for r in records if 'converted as they load' in r.getMessage()]
    assert len(said) == 1 and str(source) in said[0]
    got = on_load.state_dict()
    assert got.keys() == first.keys()
    for key in first:
        assert torch.equal(got[key], first[key]), key
    # by hand, from the authors' names
    pairs = {'patch_embed.proj.weight': 'patch_embed.proj.weight',
             'stages.1.downsample.reduction.weight': 'layers.0.downsample.reduction.weight',
             'norm3.bias': 'norm.bias',
             'stages.2.blocks.5.token_mixer.proj_w.weight':
             'layers.2.blocks.5.axial_shift.conv2_1.weight',
             'stages.2.blocks.5.token_mixer.norm_in.weight':
             'layers.2.blocks.5.axial_shift.norm1.weight',
             'stages.3.blocks.1.mlp.fc2.bias': 'layers.3.blocks.1.mlp.fc2.bias'}
    for ours, theirs in pairs.items():
        assert torch.equal(got[ours], state[theirs]), ours


def test_init_cfg_converts_an_mmdet2_detector_and_refuses_unmapped_keys(tmp_path):
    """The authors' mmdet 2.x files too (backbone.* with norm{i}); a key no rule maps is
    refused, naming it, as the converter refuses it."""
    embed_dims, depths = 8, (1, 1, 2, 1)
    backbone = PublishedASMLP(embed_dims, depths, out_indices=(0, 1, 2, 3))
    backbone.load_state_dict(randomized_state(backbone))
    state = OrderedDict(('backbone.' + k, v) for k, v in backbone.state_dict().items())
    state.update(mmdet2_mask_rcnn([embed_dims * 2**i for i in range(4)], width=16, fc=32))
    source = tmp_path / 'mask_rcnn_published.pth'
    torch.save({'state_dict': state, 'meta': {'CLASSES': ('a', 'b')}}, source)
    arch = dict(embed_dims=embed_dims, depths=list(depths))
    model = ASMLP(arch, out_indices=(0, 1, 2, 3), init_cfg=pretrained(source))
    model.init_weights()
    for ours, theirs in {'stages.2.blocks.1.token_mixer.proj_h.bias':
                         'layers.2.blocks.1.axial_shift.conv2_2.bias',
                         'stages.3.downsample.norm.weight': 'layers.2.downsample.norm.weight',
                         'norm2.weight': 'norm2.weight'}.items():
        assert torch.equal(model.state_dict()[ours], state['backbone.' + theirs]), ours
    with torch.no_grad():
        x = torch.randn(1, 3, 40, 56)
        for a, b in zip(model.eval()(x), backbone.eval()(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    state['backbone.layers.0.blocks.0.axial_shift.gate.weight'] = torch.zeros(8, 8, 1, 1)
    torch.save({'state_dict': state}, source)
    with pytest.raises(ValueError, match=r'no mapping: backbone\.layers\.0\.blocks\.0\.'
                                         r'axial_shift\.gate\.weight.*--drop-unmapped'):
        ASMLP(arch, out_indices=(0, 1, 2, 3), init_cfg=pretrained(source)).init_weights()


def test_load_from_an_authors_file_is_sent_to_the_converter(tmp_path):
    """load_from (not init_cfg) of the authors' detector would load its heads only, whose
    names did not change: the runner's check refuses it and names the converter."""
    from types import SimpleNamespace

    from mmengine.config import Config

    from asmlp_mm.engine import CheckpointFitsHook
    published = PublishedASMLP(8, (1, 1, 1, 1), out_indices=(0, 1, 2, 3)).state_dict()
    checkpoint = {'state_dict': {'backbone.' + k: v for k, v in published.items()}}
    runner = SimpleNamespace(model=torch.nn.Linear(2, 2),
                             cfg=Config(dict(load_from='mask_rcnn_asmlp.pth')))
    with pytest.raises(CheckpointMismatchError, match=r"'mask_rcnn_asmlp.pth' is in the "
                       r"layout of the authors' released code.*asmlp_to_mm.py"):
        CheckpointFitsHook(exact=False).after_load_checkpoint(runner, checkpoint)


def test_the_converted_detector_loads_with_load_from_despite_a_foreign_meta(tmp_path):
    """The authors' mmdet 2.x meta may pickle objects (here: a class of this module and
    numpy values): the converter reads it without any flag, and its output loads through
    mmengine's loader (as load_from does) and with plain weights-only torch.load."""
    from mmengine.config import Config

    from asmlp_mm.analysis import build_model_from_config
    embed_dims, depths = 10, (1, 1, 1, 1)
    dims = [embed_dims * 2**i for i in range(4)]
    backbone = PublishedASMLP(embed_dims, depths, out_indices=(0, 1, 2, 3))
    backbone.load_state_dict(randomized_state(backbone))
    heads = mmdet2_mask_rcnn(dims)
    state = OrderedDict(('backbone.' + k, v) for k, v in backbone.state_dict().items())
    state.update(heads)
    meta = dict(CLASSES=('a', 'b'), PALETTE=np.array([[1, 2, 3], [4, 5, 6]]),
                seed=np.int64(3), epoch=np.int64(36), config=Recorder('cfg text'))
    source, target = tmp_path / 'mask_rcnn_published.pth', tmp_path / 'ours.pth'
    torch.save(dict(state_dict=state, meta=meta, optimizer={}), source)
    config = tmp_path / 'tiny.py'
    config.write_text(
        f"_base_ = '{MASK_T}'\n"
        f"model = dict(backbone=dict(arch=dict(_delete_=True, embed_dims={embed_dims}, "
        f"depths={list(depths)}), init_cfg=None), neck=dict(in_channels={dims}))\n")
    summary = conv.convert(str(source), str(target), config=str(config), log=lambda *a: None)
    assert summary['unmapped'] == []

    plain = torch.load(target, weights_only=True)
    assert plain['meta']['dataset_meta'] == {'classes': ('a', 'b'),
                                             'palette': [[1, 2, 3], [4, 5, 6]]}
    assert plain['meta']['source_epoch'] == 36
    model = build_model_from_config(Config.fromfile(str(config))).eval()
    load_checkpoint(model, str(target), strict=True)  # every key, both ways
    for key, value in heads.items():  # names unchanged from mmdet 2.x
        assert torch.equal(model.state_dict()[key], value), key
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        for a, b in zip(model.backbone(x), backbone.eval()(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_meta_values_holding_foreign_objects_are_left_out_and_said(tmp_path):
    """The converter copies CLASSES, PALETTE, dataset_meta and the versions from the
    source's meta; one that holds an object the reader left out is not copied (the result
    would not load weights-only), and the log says so."""
    path = tmp_path / 'meta.pth'
    torch.save({'meta': {'CLASSES': ('a', 'b'), 'PALETTE': [Recorder(1)],
                         'mmdet_version': '2.11.0'}}, path)
    meta = load_local_checkpoint(path)['meta']
    lines = []
    out = conv.convert_meta(meta, str(path), 'det', {}, [], log=lines.append)
    assert out['dataset_meta'] == {'classes': ('a', 'b')}
    assert out['source_mmdet_version'] == '2.11.0'
    assert lines == [f"left out meta['PALETTE']: it holds objects that were not unpickled "
                     f"({__name__}.Recorder)"]


def test_mismatch_report_lists_each_kind_up_to_its_limit():
    """Many wrong shapes do not hide the missing and the unexpected keys."""
    model = {f'w{i}': torch.zeros(2) for i in range(10)}
    model.update(gone_a=torch.zeros(1), gone_b=torch.zeros(1))
    loaded = {f'w{i}': torch.zeros(3) for i in range(10)}
    loaded['extra'] = torch.zeros(1)
    text = describe_mismatches('ckpt.pth', state_dict_mismatches(model, loaded), 'the model',
                               limit=3, hint='a hint')
    lines = text.splitlines()
    assert lines[:2] == ["checkpoint 'ckpt.pth' does not fit the model: 13 problem(s)",
                         '  a hint']
    assert lines[2:] == ['  missing in the checkpoint: gone_a',
                         '  missing in the checkpoint: gone_b',
                         '  shape of w0: (3,) in the checkpoint, (2,) in the model',
                         '  shape of w1: (3,) in the checkpoint, (2,) in the model',
                         '  shape of w2: (3,) in the checkpoint, (2,) in the model',
                         '  ... and 7 more like these',
                         '  not in the model: extra']
