"""The package as OpenMMLab's tools find it: the wheel's .mim folder (configs, tools, model
index), mim's search, and mmpretrain's model hub."""
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLASSIFIERS = ['asmlp-base_8xb128_in1k', 'asmlp-base_8xb128_in1k-384px',
               'asmlp-small_8xb128_in1k', 'asmlp-tiny_8xb128_in1k']


def metafile_names(path):
    from modelindex.load_model_index import load
    return sorted(m.name for m in load(str(path)).models)


def repository_files():
    """The files a clone of this checkout would have (tracked and new, not ignored)."""
    out = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if osp.isfile(osp.join(ROOT, f))]


@pytest.fixture(scope='module')
def wheel_venv(tmp_path_factory):
    """A wheel built from a copy of the repository, installed with --no-deps into a new
    venv that sees the project venv's packages (but not its editable asmlp_mm)."""
    tmp = tmp_path_factory.mktemp('wheel')
    source = tmp / 'source'
    for name in repository_files():
        os.makedirs(osp.dirname(source / name), exist_ok=True)
        shutil.copy2(osp.join(ROOT, name), source / name)
    pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check', '-q']
    subprocess.run(pip + ['wheel', '--no-deps', '--no-build-isolation', '-w', str(tmp / 'dist'),
                          str(source)], check=True, capture_output=True)
    wheel, = (tmp / 'dist').iterdir()
    venv = tmp / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
    site, = venv.glob('lib/python*/site-packages')
    # a path line: the project's packages, without running its .pth files (the editable
    # install of asmlp_mm is one)
    base = next(p for p in sys.path if p.endswith('site-packages') and osp.isdir(p))
    (site / 'project_venv.pth').write_text(base + '\n')
    subprocess.run(pip + ['install', '--no-deps', '--target', str(site), str(wheel)],
                   check=True, capture_output=True)
    return venv, site


def run_in(venv, code, *args):
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    return subprocess.run([str(venv / 'bin' / 'python'), *args] + (['-c', code] if code else []),
                          capture_output=True, text=True, cwd=str(venv), env=env, check=True)


def test_the_wheel_carries_configs_tools_and_model_index_and_builds_a_detector(wheel_venv):
    venv, site = wheel_venv
    mim = site / 'asmlp_mm' / '.mim'
    assert (mim / 'tools' / 'train.py').is_file() and (mim / 'tools' / 'test.py').is_file()
    assert (site / 'asmlp_mm' / 'ops' / 'csrc' / 'axial_shift.cpp').is_file()
    assert metafile_names(mim / 'model-index.yml') == metafile_names(
        osp.join(ROOT, 'model-index.yml'))
    for folder in ('asmlp', 'mask_rcnn', 'cascade_mask_rcnn', 'upernet'):
        packaged = set(os.listdir(mim / 'configs' / folder)) - {'__pycache__'}  # pip's
        assert packaged == set(os.listdir(osp.join(ROOT, 'configs', folder))) - {'__pycache__'}
    out = run_in(venv, '''
import os.path as osp
import asmlp_mm
from asmlp_mm.registry import mim_root
from mmengine.config import Config
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
register_all_modules()
cfg = Config.fromfile(osp.join(mim_root(), 'configs', 'mask_rcnn',
                               'mask-rcnn_asmlp-tiny_fpn_ms-crop-1x_coco.py'))
cfg.model.backbone.init_cfg = None
model = MODELS.build(cfg.model)
print(asmlp_mm.__file__, mim_root(), type(model).__name__, type(model.backbone).__name__)
''').stdout.split()
    assert out == [str(site / 'asmlp_mm' / '__init__.py'), str(mim), 'MaskRCNN', 'ASMLP']


def test_mim_search_lists_the_models_with_their_metrics(wheel_venv):
    venv, _ = wheel_venv
    out = run_in(venv, None, '-m', 'mim', 'search', 'asmlp-mm').stdout
    found = dict(re.findall(r'config id: (\S+)\n(?:(?!config id).*\n)*?'
                            r'(?:imagenet-1k/top_1_accuracy|coco/box_ap|ade20k/miou\S*)'
                            r'\s+(\S+)', out))
    assert sorted(found) == metafile_names(osp.join(ROOT, 'model-index.yml'))
    assert found['asmlp-tiny_8xb128_in1k'] == '81.3'
    assert found['cascade-mask-rcnn_asmlp-base_fpn_ms-crop-3x_coco'] == '51.5'
    assert found['upernet_asmlp-base_8xb2-160k_ade20k-512x512'] == '49.5'


def test_mmpretrain_model_hub_knows_the_classifiers_by_config_name(tmp_path):
    """After ``import asmlp_mm``: mmpretrain's list_models, get_model and inference_model
    take the zoo's classifier names (the detectors and segmentors are not mmpretrain's)."""
    import asmlp_mm  # noqa: F401
    from mmengine.registry import DefaultScope
    from mmpretrain import get_model, inference_model, list_models
    assert list_models('*asmlp*') == CLASSIFIERS == sorted(
        metafile_names(osp.join(ROOT, 'configs', 'asmlp', 'metafile.yml')))
    torch.manual_seed(0)
    model = get_model('asmlp-tiny_8xb128_in1k')
    assert type(model.backbone).__name__ == 'ASMLP' and model.backbone.embed_dims == 96
    checkpoint = tmp_path / 'tiny.pth'
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    loaded = get_model('asmlp-tiny_8xb128_in1k', pretrained=str(checkpoint))
    for (key, want), got in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(want, got), key
    image = np.random.RandomState(0).randint(0, 255, (64, 80, 3), dtype=np.uint8)
    # the inferencer builds its pipeline in the current default scope, which other tests
    # in this process may have left at mmdet's or mmseg's
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        result = inference_model('asmlp-tiny_8xb128_in1k', image, pretrained=str(checkpoint))
    assert 0 <= result['pred_label'] < 1000 and abs(sum(result['pred_scores']) - 1) < 1e-4
    assert result['pred_class']  # an ImageNet class name, from the config's dataset
