"""The model zoo metafiles, tools/analysis/get_flops.py and receptive_field.py."""
import glob
import os.path as osp
import re
import shlex

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import load_tool
from modelindex.load_model_index import load

from asmlp_mm.analysis import paper
from asmlp_mm.analysis import build_model_from_config, count_flops, count_params

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLS_TINY = osp.join(ROOT, 'configs', 'asmlp', 'asmlp-tiny_8xb128_in1k.py')
DEMO_DET = osp.join(ROOT, 'configs', 'demo', 'cascade-mask-rcnn_asmlp-demo_fpn_shapes-coco.py')
DEMO_SEG = osp.join(ROOT, 'configs', 'demo', 'upernet_asmlp-demo_shapes-ade.py')
ZOO_FOLDERS = ('asmlp', 'mask_rcnn', 'cascade_mask_rcnn', 'upernet')


get_flops = load_tool('analysis/get_flops.py')
erf_tool = load_tool('analysis/receptive_field.py')
zoo_table = load_tool('analysis/model_zoo_table.py')
converter = load_tool('model_converters/asmlp_to_mm.py')

# The checkpoints the authors' READMEs publish (their "model" columns): the OneDrive share
# of each, and the authors' repository
PUBLISHED = {
    'asmlp-tiny_8xb128_in1k': 'Eb2lPJI2BshEjJxf9CmRkCUBnB63Wj25-FVVc6zJvgRg6w',
    'asmlp-small_8xb128_in1k': 'EVIbw8xHKk1Aq9MBQL-cRbIBVJA_hJE-HEVNf_GVgkw2iQ',
    'asmlp-base_8xb128_in1k': 'EZVBFW_LKctLqgrnnINy88wBRtGFava9wp_65emsvVW2KQ',
    'mask-rcnn_asmlp-tiny_fpn_ms-crop-1x_coco': 'EXh5rSXMKcNMlNNEnI7phmYBmw7aZ0PSDhFO-ZmHZ_Rr8A',
    'cascade-mask-rcnn_asmlp-tiny_fpn_ms-crop-1x_coco':
        'ERBgXv6TN2BMmRXDSQqkWwUBHJUQZiCwIhxl-1cZKd0iWg',
    'upernet_asmlp-base_8xb2-160k_ade20k-512x512': 'Eee6yxLZ27hAkk3yVAD6UtsB189avw7EFHN0cy59L9LOeA',
}
AUTHORS_CODE = {'Image Classification': 'https://github.com/svip-lab/AS-MLP',
                'Object Detection': 'https://github.com/svip-lab/AS-MLP-Object-Detection',
                'Semantic Segmentation':
                    'https://github.com/svip-lab/AS-MLP-Semantic-Segmentation'}


# ----------------------------------------------------------------------- metafiles
def test_every_metafile_entry_points_to_an_existing_config():
    models = paper.load_models()
    assert len(models) == 17  # 4 classifiers, 4 Mask R-CNN, 6 Cascade, 3 UperNet
    collections = {c.name for c in load(osp.join(ROOT, paper.MODEL_INDEX)).collections}
    assert len(collections) == 4
    for model in models:
        assert osp.isfile(model.config_path()), model.config
        assert model.name == osp.splitext(osp.basename(model.config))[0]
        assert model.collection in collections
        assert model.params and model.flops and model.flops_shape
        for result in model.results:
            assert set(result) == {'Task', 'Dataset', 'Metrics'} and result['Metrics']


def test_mim_reads_the_model_index():
    """mim search parses every metadata value as text or a list of text: a shape written
    as a list of numbers stopped it (AttributeError: 'int' object has no attribute
    'lower')."""
    search = pytest.importorskip('mim.commands.search')
    table = search.convert2df(load(osp.join(ROOT, 'model-index.yml')))
    assert sorted(table.index) == sorted(m.name for m in paper.load_models())
    tiny = table.loc['asmlp-tiny_8xb128_in1k']
    assert tiny['flops_input_shape'] == '(224,224)' and tiny['imagenet-1k/top_1_accuracy'] == 81.3


def test_every_zoo_config_has_a_metafile_entry():
    listed = {m.config for m in paper.load_models()}
    for folder in ZOO_FOLDERS:
        for path in glob.glob(osp.join(ROOT, 'configs', folder, '*.py')):
            assert osp.relpath(path, ROOT) in listed, path


def test_find_model_and_zoo_table():
    tiny = paper.find_model(CLS_TINY)
    assert tiny.metrics() == {'Top 1 Accuracy': 81.3}
    assert tiny.throughput == 1047 and not tiny.reproduced
    assert paper.find_model('configs/demo/asmlp-demo_1xb8_shapes-cls.py') is None
    table = zoo_table.zoo_markdown()
    rows = [line for line in table.splitlines() if line.startswith('| [')]
    assert len(rows) == len(paper.load_models())
    assert ('| 44.0 | 40.0 | 48M | 260G | 800x1280 | paper | [OneDrive](https://shanghaitech'
            in table)
    assert '| 46.0 | 41.5 | 48M | 260G | 800x1280 | paper | none published |' in table
    # the six published checkpoints, each with its conversion command under its table
    assert table.count('| [OneDrive](') == 6 and table.count('`python tools/model_') == 6
    assert '(none has been reproduced here yet)' in table


def test_the_authors_checkpoints_have_their_page_and_conversion_command():
    """Each published checkpoint: the page the authors' README links to, their repository,
    and a command that the converter takes, writing checkpoints/NAME.pth (detectors and
    segmentors checked against their config)."""
    models = {m.name: m for m in paper.load_models()}
    assert {name for name, m in models.items() if m.converted_from} == set(PUBLISHED)
    for name, share in PUBLISHED.items():
        model = models[name]
        source = model.converted_from
        assert re.fullmatch(r'https://shanghaitecheducn-my\.sharepoint\.com/:u:/g/personal/'
                            rf'liandz_shanghaitech_edu_cn/{share}\?e=\w+', source['Weights'])
        assert source['Code'] == AUTHORS_CODE[model.task]
        argv = shlex.split(source['Command'])
        assert argv[:2] == ['python', 'tools/model_converters/asmlp_to_mm.py']
        args = converter.parse_args(argv[2:])
        assert args.src == source.get('File', 'SRC.pth')
        assert args.dst == f'checkpoints/{name}.pth'
        classifier = model.task == 'Image Classification'
        assert args.config == (None if classifier else model.config)
        assert args.task is None and not args.drop_unmapped  # inferred; every key mapped
    # the only file name the authors' code gives (train_scripts/test.sh)
    assert [m.converted_from.get('File') for m in models.values() if m.converted_from] == [
        'asmlp_tiny_patch4_shift5_224.pth'] + [None] * 5


def test_downstream_configs_start_from_the_converted_classifiers():
    """The detection and segmentation configs (and the 384 fine-tuning) load their backbone
    from where the classifier conversion commands write, for the same arch."""
    from mmengine.config import Config
    models = paper.load_models()
    written = {shlex.split(m.converted_from['Command'])[3]: m for m in models
               if m.converted_from and m.task == 'Image Classification'}
    assert len(written) == 3
    for model in models:
        cfg = Config.fromfile(model.config_path())
        if model.task == 'Image Classification':
            start = cfg.get('load_from')
            assert start is None or start in written, model.name
            continue
        backbone = cfg.model.backbone
        start = backbone.init_cfg.checkpoint
        assert start in written and f'asmlp-{backbone.arch}_' in start, model.name


def test_a_reproduced_entry_is_marked_in_the_zoo_table(tmp_path):
    """An entry with its own Weights has results measured here; the notes name it."""
    (tmp_path / 'model-index.yml').write_text('Import:\n  - m.yml\n')
    entry = ('  - Name: {name}\n    In Collection: C\n    Config: {name}.py\n{extra}'
             '    Results:\n      - Task: Image Classification\n        Dataset: D\n'
             '        Metrics:\n          Top 1 Accuracy: 80.0\n')
    (tmp_path / 'm.yml').write_text(
        'Collections:\n  - Name: C\nModels:\n'
        + entry.format(name='paper-one', extra='')
        + entry.format(name='ours', extra='    Weights: https://example.org/ours.pth\n'))
    models = paper.load_models(str(tmp_path))
    assert [m.reproduced for m in models] == [False, True]
    table = zoo_table.zoo_markdown(str(tmp_path))
    assert '| 80.0 | - | - | - | paper | none published |' in table
    assert '| [reproduced here](https://example.org/ours.pth) | none published |' in table
    assert '(reproduced here: ours)' in table and 'SRC.pth' not in table


@pytest.mark.parametrize('section', ['', ' \n', '\nold table\n'])
def test_write_readme_replaces_only_the_zoo_section(tmp_path, section):
    """An empty or blank section was 'found' at the start of the README (or at its first
    space), and the tables went there."""
    import shutil
    shutil.copy(osp.join(ROOT, 'model-index.yml'), tmp_path)
    shutil.copytree(osp.join(ROOT, 'configs'), tmp_path / 'configs')
    head, tail = '# Title\n\nSome text.\n', '\n## After\n'
    readme = tmp_path / 'README.md'
    readme.write_text(f'{head}<!-- zoo-table -->{section}<!-- /zoo-table -->{tail}')
    zoo_table.write_readme(str(tmp_path))
    tables = zoo_table.zoo_markdown(str(tmp_path)).strip('\n')
    assert readme.read_text() == f'{head}<!-- zoo-table -->\n{tables}\n<!-- /zoo-table -->{tail}'
    assert zoo_table.readme_zoo(readme.read_text()) == tables


def test_bad_metafile_is_reported(tmp_path):
    (tmp_path / 'model-index.yml').write_text('Import:\n  - m.yml\n')
    (tmp_path / 'm.yml').write_text('Models:\n  - Name: x\n    Config: x.py\n')
    with pytest.raises(ValueError, match="'In Collection'"):
        paper.load_models(str(tmp_path))
    (tmp_path / 'm.yml').write_text('Models:\n  - Name: x\n    Config: x.py\n'
                                    '    In Collection: C\n    Metadata:\n'
                                    '      FLOPs Input Shape: [224, 224]\n')
    with pytest.raises(ValueError, match=r'"FLOPs Input Shape" of x must be "\(H,W\)"'):
        paper.load_models(str(tmp_path))
    (tmp_path / 'm.yml').write_text('Models:\n  - Name: x\n    Config: x.py\n'
                                    '    In Collection: C\n    Converted From:\n'
                                    '      Weights: https://example.org/x\n      Code: c\n')
    with pytest.raises(ValueError, match=r'"Converted From" of x .*: \[\'Command\'\]'):
        paper.load_models(str(tmp_path))
    with pytest.raises(FileNotFoundError, match='model-index.yml'):
        paper.load_models(str(tmp_path / 'nowhere'))


# ----------------------------------------------------------------------- FLOPs
def test_paper_mode_reproduces_asmlp_t(capsys):
    rows = get_flops.paper_table(['asmlp-tiny_8xb128_in1k'])
    assert len(rows) == 1
    row = rows[0]
    assert row['params'] / 1e6 == pytest.approx(28, abs=0.5)
    assert row['flops'] / 1e9 == pytest.approx(4.4, abs=0.05)
    out = capsys.readouterr().out
    assert 'asmlp-tiny_8xb128_in1k' in out and 'multiply-accumulates' in out


def test_detection_counts_backbone_neck_and_heads():
    cfg = get_flops.load_config(DEMO_DET)  # a narrow override of our Cascade config
    model = build_model_from_config(cfg)
    backbone = count_flops(model.backbone, [torch.zeros(1, 3, 64, 96)])
    backbone_and_neck = count_flops(nn.Sequential(model.backbone, model.neck),
                                    [torch.zeros(1, 3, 64, 96)])
    assert backbone_and_neck > backbone
    # mmdet 3.x's way: padded to a multiple of 32, heads on the RPN's proposals
    real = get_flops.measure(cfg, (50, 70), rois='rpn')
    assert real['input_shape'] == (64, 96)
    assert real['params'] == count_params(model)
    assert real['flops'] > 2 * backbone_and_neck  # 3 box + 3 mask heads on 100 RoIs
    # the paper's way: 1000 RoIs per box head, 100 per mask head
    paper_way = get_flops.measure(cfg, (64, 96))
    assert paper_way['flops'] == sum(paper_way['parts'].values())
    assert paper_way['parts']['backbone'] == backbone
    assert paper_way['params'] == real['params']


class DecodePath(nn.Module):
    """What a segmentor computes at inference: the decode head on the backbone."""

    def __init__(self, segmentor):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, x):
        return self.segmentor.decode_head(self.segmentor.backbone(x))


def test_segmentation_counts_the_inference_path():
    cfg = get_flops.load_config(DEMO_SEG)  # a narrow override of our UperNet config
    result = get_flops.measure(cfg, (64, 80))
    model = build_model_from_config(cfg).eval()
    assert result['params'] == count_params(model)  # auxiliary head included, as the paper
    assert result['flops'] == count_flops(DecodePath(model), [torch.zeros(1, 3, 64, 80)])
    assert result['flops'] > count_flops(model.backbone, [torch.zeros(1, 3, 64, 80)])


def test_command_line_single_config_and_errors(tmp_path, capsys):
    get_flops.main([CLS_TINY, '--shape', '64', '--cfg-options', 'model.head.num_classes=10'])
    out = capsys.readouterr().out
    assert 'Input shape: 64 x 64' in out and 'multiply-accumulates' in out
    tiny = paper.find_model(CLS_TINY)
    params = float(out.split('Params: ')[1].split()[0])
    # the paper's 28M less the 990 classes taken off the 768-wide head
    assert params == pytest.approx(tiny.params / 1e6 - 990 * 769 / 1e6, abs=0.5)
    flops = float(out.split('FLOPs: ')[1].split()[0])
    # the 224x224 paper figure scales with the number of pixels (backbone) at 64x64
    assert tiny.flops_shape == (224, 224)
    assert flops == pytest.approx(tiny.flops / 1e9 * (64 / 224)**2, rel=0.05)
    with pytest.raises(SystemExit, match='does not exist'):
        get_flops.main([str(tmp_path / 'missing.py')])
    # a variable of the config file, put in place when it was read: it would change nothing
    with pytest.raises(SystemExit, match="--cfg-options dataset_type: 'dataset_type' is a "
                                         "variable of .*setting it changes nothing"):
        get_flops.main([CLS_TINY, '--cfg-options', 'dataset_type=CustomDataset'])


# ----------------------------------------------------------------------- receptive field
class OneConv(nn.Module):
    """A 'backbone' whose only stage is one 3x3 convolution (of two equal channels, made
    positive so that the tool's ReLU passes them); ``centred``: minus the mean over the
    channels, as after a per-pixel LayerNorm."""

    def __init__(self, centred=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        nn.init.constant_(self.conv.weight, 1.)
        nn.init.zeros_(self.conv.bias)
        self.centred = centred

    def forward(self, x):
        if self.centred:
            out = self.conv(x) * torch.tensor([1., -1.]).view(1, 2, 1, 1)
            return (out - out.mean(1, keepdim=True), )
        return (self.conv(x).abs(), )


def test_erf_of_a_single_conv_is_its_kernel_window():
    erf, = erf_tool.effective_receptive_field(OneConv(), (9, 11), num_inputs=2)
    expected = np.zeros((9, 11))
    expected[3:6, 4:7] = 3 * 2  # |d sum_c out_c / d in_k| = 2 output channels, 3 inputs
    np.testing.assert_allclose(erf, expected)
    assert erf_tool.centred_square_fraction(erf, 0.5) == pytest.approx(3 / 11)
    assert erf_tool.centred_square_fraction(np.ones((5, 5)), 1.0) == 1.0


def test_erf_after_a_norm_that_centres_the_channels():
    """After a per-pixel LayerNorm (Swin's and ConvNeXt's stage outputs) the channels of a
    pixel sum to a constant: the tool's maps were zero, their square 1 pixel wide. The
    ReLU of RepLKNet's ERF code keeps the gradient; a map that is still zero is an error."""
    erf, = erf_tool.effective_receptive_field(OneConv(centred=True), (9, 11), num_inputs=4)
    assert (erf[3:6, 4:7] > 0).all() and erf.sum() == erf[3:6, 4:7].sum()

    class Constant(nn.Module):
        def forward(self, x):
            return (x * 0, )

    with pytest.raises(ValueError, match=r'zero everywhere at stage\(s\) \[0\]'):
        erf_tool.effective_receptive_field(Constant(), (9, 11), num_inputs=1)
    with pytest.raises(ValueError, match='holds no gradient'):
        erf_tool.centred_square_fraction(np.zeros((5, 5)))


@pytest.mark.parametrize('argv,match', [
    (['--out', 'erf.foo'], "--out 'erf.foo': name the file with one of the suffixes .*\\.png"),
    (['--out', 'erf'], 'suffixes'),
    (['--out', '{tmp}'], 'is a folder'),
    (['--out', '{tmp}/file/erf.png'], 'is not a writable folder'),
    (['--shape', '0', '8'], '--shape must be two positive sizes'),
    (['--num-inputs', '0'], '--num-inputs must be >= 1'),
    (['--mass', '0'], r'--mass must lie in \(0, 1\]'),
])
def test_receptive_field_refuses_bad_options_before_any_work(tmp_path, capsys, argv, match):
    (tmp_path / 'file').write_text('')
    argv = [a.replace('{tmp}', str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit):
        erf_tool.parse_args(argv)
    assert re.search(match, capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['file']


def test_receptive_field_of_random_weights_is_reproducible(tmp_path, capsys):
    config = tiny_cls_config(tmp_path, 8, 'tiny.py')
    argv = ['--asmlp', config, '--compare', '--shape', '32', '32', '--num-inputs', '1',
            '--out', str(tmp_path / 'erf.png')]
    printed = []
    for _ in range(2):
        erf_tool.main(argv)
        printed.append([line for line in capsys.readouterr().out.splitlines()
                        if 'per stage' in line])
    assert printed[0] == printed[1] and len(printed[0]) == 1


def test_receptive_field_tool_writes_a_png(tmp_path, capsys):
    config = tmp_path / 'asmlp_tiny.py'
    config.write_text(f"_base_ = '{CLS_TINY}'\nmodel = dict(backbone=dict(arch=dict("
                      f"_delete_=True, embed_dims=8, depths=[1, 1, 1, 1])), "
                      f"head=dict(in_channels=64))\n")
    out = tmp_path / 'erf' / 'grid.png'
    erf_tool.main(['--asmlp', str(config), '--compare',
                   'mmpretrain::resnet/resnet18_8xb32_in1k.py', '--shape', '48', '48',
                   '--num-inputs', '2', '--out', str(out)])
    assert out.is_file() and out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    lines = [line for line in capsys.readouterr().out.splitlines() if 'per stage' in line]
    assert len(lines) == 2  # AS-MLP and ResNet-18
    for line in lines:  # four stages each, every fraction in (0, 1], growing with depth
        fractions = [float(v) for v in line.split(':')[-1].split(',')]
        assert len(fractions) == 4 and all(0 < f <= 1 for f in fractions)
        assert fractions[0] < fractions[3]
    import matplotlib.image
    assert matplotlib.image.imread(str(out)).shape[:2] == (2 * 280, 4 * 260)


@pytest.mark.parametrize('argv,match', [
    (['--paper', '--shape', '64'], '--paper measures each model at the input size'),
    ([CLS_TINY, '--filter', 'base'], '--filter chooses models of --paper'),
    ([CLS_TINY, '--shape', '0', '5'], '--shape takes H W or one size, all positive'),
])
def test_get_flops_refuses_options_it_would_ignore(capsys, argv, match):
    with pytest.raises(SystemExit):
        get_flops.parse_args(argv)
    assert match in capsys.readouterr().err


@pytest.mark.parametrize('content,match', [
    (None, "cannot be read: OSError"),  # a README, not a config
    ('model = dict(\n', 'cannot be read: SyntaxError'),
    ("default_scope = 'mmpretrain'\n", 'has no model'),
    ("default_scope = 'mmpretrain'\nmodel = dict(type='NoSuchModel')\n",
     'cannot be built: KeyError'),
    (f"_base_ = '{CLS_TINY}'\nmodel = dict(backbone=dict(nonsense=3))\n",
     "cannot be built: TypeError.*nonsense"),
    ("_base_ = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'\n",
     '--rois paper counts the RoI heads of a two-stage detector.*--rois rpn'),
])
def test_get_flops_reports_a_config_it_cannot_measure(tmp_path, content, match):
    path = tmp_path / ('README.md' if content is None else 'config.py')
    path.write_text(content or '# not a config\n')
    with pytest.raises(SystemExit, match=match):
        get_flops.main([str(path), '--shape', '64'])


def test_paper_table_filter_that_matches_nothing_is_an_error():
    with pytest.raises(SystemExit, match='no model of the zoo matches .*asmlp-tiny_8xb128_in1k'):
        get_flops.main(['--paper', '--filter', 'asmlp-tiyn'])


def tiny_cls_config(tmp_path, embed_dims, name):
    config = tmp_path / name
    config.write_text(f"_base_ = '{CLS_TINY}'\nmodel = dict(backbone=dict(arch=dict("
                      f"_delete_=True, embed_dims={embed_dims}, depths=[1, 1, 1, 1])), "
                      f"head=dict(in_channels={8 * embed_dims}, num_classes=3))\n")
    return str(config)


def test_analysis_tools_refuse_a_checkpoint_of_another_model(tmp_path):
    """The ERF and the CAM tools would otherwise warn and draw random weights."""
    import cv2
    narrow = tiny_cls_config(tmp_path, 8, 'narrow.py')
    wide = tiny_cls_config(tmp_path, 16, 'wide.py')
    torch.save({'state_dict': build_model_from_config(wide).state_dict()},
               str(tmp_path / 'wide.pth'))
    cv2.imwrite(str(tmp_path / 'img.png'), np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(SystemExit, match=r'does not fit the backbone of .*narrow\.py') as err:
        erf_tool.main(['--asmlp', narrow, '--asmlp-checkpoint', str(tmp_path / 'wide.pth'),
                       '--shape', '32', '32', '--num-inputs', '1',
                       '--out', str(tmp_path / 'erf.png')])
    assert 'shape of patch_embed.proj.weight: (16, 3, 4, 4)' in str(err.value)
    with pytest.raises(SystemExit, match=r'does not fit the classifier of .*narrow\.py'):
        load_tool('analysis/vis_cam.py').main([str(tmp_path / 'img.png'), narrow,
                                   str(tmp_path / 'wide.pth')])
    with pytest.raises(SystemExit, match='not a classification'):
        load_tool('analysis/vis_cam.py').main([str(tmp_path / 'img.png'), DEMO_SEG,
                                   str(tmp_path / 'wide.pth')])
    assert not (tmp_path / 'erf.png').exists()


def test_receptive_field_takes_a_classifier_checkpoint(tmp_path, capsys):
    """A classifier has the output norm of its last stage only; the tool's backbone
    outputs every stage: the other stages' norms keep their initial values."""
    config = tiny_cls_config(tmp_path, 8, 'tiny.py')
    classifier = build_model_from_config(config)
    classifier.init_weights()
    assert not any(k.startswith('backbone.norm0.') for k in classifier.state_dict())
    torch.save({'state_dict': classifier.state_dict()}, str(tmp_path / 'cls.pth'))
    backbone = erf_tool.load_backbone(config, str(tmp_path / 'cls.pth'))
    for key, value in backbone.state_dict().items():
        if not key.startswith(('norm0.', 'norm1.', 'norm2.')):
            assert torch.equal(value, classifier.state_dict()['backbone.' + key]), key
    assert 'the checkpoint has no norm0.bias, norm0.weight, norm1.bias' in (
        capsys.readouterr().err)


def test_receptive_field_bad_model_name():
    with pytest.raises(ValueError, match='neither a config file'):
        erf_tool.load_backbone('no-such-model_in1k')


def test_cam_through_mmpretrain_vis_cam(tmp_path, monkeypatch):
    import cv2
    config = tmp_path / 'asmlp_tiny.py'
    config.write_text(f"_base_ = '{CLS_TINY}'\nmodel = dict(backbone=dict(arch=dict("
                      f"_delete_=True, embed_dims=8, depths=[1, 1, 1, 1])), "
                      f"head=dict(in_channels=64, num_classes=3))\n")
    model = build_model_from_config(str(config))
    model.init_weights()
    torch.save({'state_dict': model.state_dict()}, str(tmp_path / 'tiny.pth'))
    image = np.random.RandomState(0).randint(0, 255, (96, 128, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'img.png'), image)
    out = tmp_path / 'cam.png'
    cam_tool = load_tool('analysis/vis_cam.py')
    # options before the positional arguments, as mmpretrain's own parser takes them
    cam_tool.main(['--method', 'gradcam', '--target-category', '1', '--save-path', str(out),
                   str(tmp_path / 'img.png'), str(config), str(tmp_path / 'tiny.pth')])
    cam = cv2.imread(str(out))
    assert cam.shape == (224, 224, 3)  # the config's test pipeline: resize 256, crop 224
    (tmp_path / 'text.png').write_text('not an image')
    image, ckpt = str(tmp_path / 'img.png'), str(tmp_path / 'tiny.pth')
    for argv, match in [
            ([str(tmp_path / 'none.png'), str(config), ckpt], "image .*none.png' does not"),
            ([str(tmp_path / 'text.png'), str(config), ckpt], 'cannot be read as an image'),
            ([image, str(config), ckpt, '--target-layers', 'backbone.nrom3'],
             r"no layer \['backbone.nrom3'\].*backbone.norm3"),
            ([image, str(config), ckpt, '--target-category', '3'],
             r'--target-category \[3\]: the classifier has the classes 0..2'),
            ([image, str(config), ckpt, '--method', 'gradcamm'], 'invalid CAM type gradcamm'),
            ([image, str(config), ckpt, '--save-path', str(tmp_path / 'cam')],
             'name the file with one of the suffixes .*\\.jpg'),
            ([image, str(config), ckpt, '--save-path', str(tmp_path / 'text.png' / 'c.png')],
             'is not a writable folder')]:
        with pytest.raises(SystemExit, match=match):
            cam_tool.main(argv)
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    with pytest.raises(SystemExit, match='no display .*--save-path'):
        cam_tool.main([image, str(config), ckpt])


def test_analysis_tools_print_no_pkg_resources_warnings():
    """setuptools < 82 warns at every import of pkg_resources (six times in this run, from
    mmengine's 'mmdet::' config bases): importing asmlp_mm silences that warning alone."""
    import subprocess
    import sys
    result = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'analysis', 'get_flops.py'),
                             DEMO_DET, '--shape', '64'], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'FLOPs:' in result.stdout and 'pkg_resources' not in result.stderr
