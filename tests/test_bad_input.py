"""Bad input gets one clear error, or is handled (issue: reliability)."""
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from asmlp_mm.analysis import build_model_from_config
from asmlp_mm.compat import CheckpointError
from asmlp_mm.datasets import make_classification_folder
from asmlp_mm.models import ASMLP

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLS_DEMO = osp.join(ROOT, 'configs', 'demo', 'asmlp-demo_1xb8_shapes-cls.py')
TINY = dict(embed_dims=8, depths=[1, 1, 1, 1])


def save_classifier(path, arch):
    cfg = Config.fromfile(CLS_DEMO)
    cfg.model.backbone.arch = arch
    cfg.model.head.in_channels = arch['embed_dims'] * 8
    model = build_model_from_config(cfg)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return model


def pretrained(path, prefix='backbone.'):
    return dict(type='Pretrained', checkpoint=str(path), prefix=prefix)


def test_pretrained_from_classifier_checkpoint(tmp_path):
    classifier = save_classifier(tmp_path / 'cls.pth', TINY)
    model = ASMLP(TINY, out_indices=(0, 1, 2, 3), init_cfg=pretrained(tmp_path / 'cls.pth'))
    model.init_weights()
    for key, value in classifier.backbone.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)


def test_pretrained_of_another_arch_names_the_mismatch(tmp_path):
    save_classifier(tmp_path / 'wide.pth', dict(embed_dims=16, depths=[1, 1, 1, 1]))
    model = ASMLP(TINY, init_cfg=pretrained(tmp_path / 'wide.pth'))
    with pytest.raises(ValueError, match=r'(?s)does not fit ASMLP\(embed_dims=8.*shape of'):
        model.init_weights()
    save_classifier(tmp_path / 'deep.pth', dict(embed_dims=8, depths=[1, 1, 3, 1]))
    model = ASMLP(TINY, init_cfg=pretrained(tmp_path / 'deep.pth'))
    with pytest.raises(ValueError, match='not in the model: stages.2.blocks.1'):
        model.init_weights()


def test_pretrained_wrong_prefix_or_not_a_checkpoint(tmp_path):
    save_classifier(tmp_path / 'cls.pth', TINY)
    with pytest.raises(ValueError, match="no keys starting with 'encoder.'"):
        ASMLP(TINY, init_cfg=pretrained(tmp_path / 'cls.pth', 'encoder.')).init_weights()
    (tmp_path / 'junk.pth').write_bytes(b'\x00garbage' * 10)
    with pytest.raises(CheckpointError, match='cannot load'):
        ASMLP(TINY, init_cfg=pretrained(tmp_path / 'junk.pth')).init_weights()


def run_test_tool(config, checkpoint, cwd, *opts):
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'test.py'), config, str(checkpoint),
           '--work-dir', str(cwd / 'work'), *opts]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)


def test_test_tool_rejects_bad_checkpoints(tmp_path):
    data = tmp_path / 'data'
    make_classification_folder(str(data), num_train=1, num_val=1, size=32)
    opts = ['--cfg-options', f'test_dataloader.dataset.data_root={data}']
    (tmp_path / 'junk.pth').write_text('hello')
    result = run_test_tool(CLS_DEMO, tmp_path / 'junk.pth', tmp_path, *opts)
    assert result.returncode != 0 and 'cannot load' in result.stderr
    save_classifier(tmp_path / 'wide.pth', dict(embed_dims=24, depths=[1, 1, 1, 1]))
    result = run_test_tool(CLS_DEMO, tmp_path / 'wide.pth', tmp_path, *opts)
    assert result.returncode != 0
    assert 'does not fit the model of this config' in result.stderr
    assert 'shape of backbone.patch_embed.proj.weight' in result.stderr
    result = run_test_tool(CLS_DEMO, tmp_path / 'missing.pth', tmp_path, *opts)
    assert result.returncode != 0 and 'does not exist' in result.stderr


def test_odd_small_gray_and_rgba_images_classify(tmp_path):
    from mmpretrain.registry import DATASETS
    from mmengine.registry import DefaultScope
    root = tmp_path / 'odd'
    (root / 'val' / 'a').mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (13, 29), dtype=np.uint8), 'L').save(
        root / 'val' / 'a' / 'gray.png')
    Image.fromarray(rng.integers(0, 255, (7, 5, 4), dtype=np.uint8), 'RGBA').save(
        root / 'val' / 'a' / 'rgba.png')
    Image.fromarray(rng.integers(0, 255, (333, 51, 3), dtype=np.uint8)).save(
        root / 'val' / 'a' / 'odd.jpg')
    cfg = Config.fromfile(CLS_DEMO)
    model = build_model_from_config(cfg).eval()
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        dataset = DATASETS.build(dict(cfg.test_dataloader.dataset, data_root=str(root)))
    assert len(dataset) == 3
    for i in range(3):
        sample = dataset[i]
        assert sample['inputs'].shape[0] == 3
        batch = model.data_preprocessor({'inputs': [sample['inputs']],
                                         'data_samples': [sample['data_samples']]})
        with torch.no_grad():
            pred, = model(**batch, mode='predict')
        assert pred.pred_score.shape == (3, )


def test_missing_dataset_folder_is_reported(tmp_path):
    from mmpretrain.registry import DATASETS
    from mmengine.registry import DefaultScope
    cfg = Config.fromfile(CLS_DEMO)
    with DefaultScope.overwrite_default_scope('mmpretrain'), \
            pytest.raises(Exception, match='nowhere'):
        DATASETS.build(dict(cfg.test_dataloader.dataset, data_root=str(tmp_path / 'nowhere')))
