"""The README's promises: its zoo table comes from the metafiles, CI runs its test command."""
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from helpers import load_tool

from asmlp_mm.analysis import build_model_from_config, paper
from asmlp_mm.datasets import demo_data

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
demo = load_tool('demo.py')
zoo_table = load_tool('analysis/model_zoo_table.py')
readme_zoo, zoo_markdown = zoo_table.readme_zoo, zoo_table.zoo_markdown


def read(path):
    with open(osp.join(ROOT, path)) as f:
        return f.read()


def test_readme_zoo_table_matches_metafiles():
    assert readme_zoo(read('README.md')) == zoo_markdown().strip('\n'), \
        'README zoo out of date: run python tools/analysis/model_zoo_table.py --write-readme'


ARCH_NAMES = {'T': 'tiny', 'S': 'small', 'B': 'base'}


def table_rows(text):
    """The cells of every row of the markdown tables in ``text`` (header rows included)."""
    return [[cell.strip().strip('`') for cell in line.strip().strip('|').split('|')]
            for line in text.splitlines() if line.startswith('|') and '---' not in line]


def paper_side(cell, unit):
    """The paper's figure of an "ours / paper" cell, e.g. '47.8M / 48M' -> '48'."""
    match = re.fullmatch(rf'[\d.]+{unit} / ([\d.]+){unit}', cell)
    return match and match.group(1)


def same_figure(written, value, scale):
    """Whether ``written`` (e.g. '4.4') is ``value`` / ``scale`` to the digits it shows."""
    decimals = len(written.split('.')[1]) if '.' in written else 0
    return round(value / scale, decimals) == float(written)


def check_paper_columns(path, model_of_row):
    """The paper's side of every "ours / paper" params and FLOPs cell in ``path``'s tables
    is the metafiles' figure of the row's model(s)."""
    checked = 0
    for row in table_rows(read(path)):
        names = model_of_row(row)
        for cell in row:
            for unit, attribute, scale in (('M', 'params', 1e6), ('G', 'flops', 1e9)):
                written = paper_side(cell, unit)
                if written is None or names is None:
                    continue
                models = [m for m in paper.load_models()  # a detector: its 1x and 3x
                          if m.name == names or m.name.startswith(names + '_fpn_')]
                assert models, (path, row)
                for model in models:
                    assert same_figure(written, getattr(model, attribute), scale), \
                        (path, row, model.name, getattr(model, attribute))
                checked += 1
    return checked


def test_the_docs_paper_figures_are_the_metafiles():
    """The parameter and FLOPs tables of the docs (measured by get_flops.py --paper) restate
    the paper's figures next to ours; those must be the model zoo's."""
    def tools_row(row):  # 'asmlp-tiny_8xb128_in1k' or 'mask-rcnn_asmlp-tiny (1x, 3x)'
        return row[0].split(' (')[0] if row[0] != 'config' else None

    def detection_row(row):  # 'Cascade Mask R-CNN, AS-MLP-T'
        match = re.fullmatch(r'(Mask R-CNN|Cascade Mask R-CNN), AS-MLP-([TSB])', row[0])
        detector = {'Mask R-CNN': 'mask-rcnn', 'Cascade Mask R-CNN': 'cascade-mask-rcnn'}
        return match and f'{detector[match.group(1)]}_asmlp-{ARCH_NAMES[match.group(2)]}'

    def segmentation_row(row):  # a config path
        return osp.splitext(osp.basename(row[0]))[0] if row[0].endswith('.py') else None

    assert check_paper_columns('docs/tools.md', tools_row) == 24
    assert check_paper_columns('docs/detection.md', detection_row) == 10
    assert check_paper_columns('docs/segmentation.md', segmentation_row) == 3
    flops = re.search(r'paper: T (\d+)G, S (\d+)G, B (\d+)G', read('docs/segmentation.md'))
    for arch, written in zip('TSB', flops.groups()):
        model = paper.find_model(f'upernet_asmlp-{ARCH_NAMES[arch]}_8xb2-160k_ade20k-512x512')
        assert same_figure(written, model.flops, 1e9), (arch, written, model.flops)


def heading_anchor(heading):
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def test_the_docs_links_lead_somewhere():
    """Every relative link of the README and docs/ names a file of the repository and, with
    a '#', a heading of that file (the sections moved between them)."""
    pages = ['README.md'] + sorted(
        osp.join('docs', name) for name in os.listdir(osp.join(ROOT, 'docs'))
        if name.endswith('.md'))
    assert heading_anchor('Parameters and FLOPs: `tools/analysis/get_flops.py`') == \
        'parameters-and-flops-toolsanalysisget_flopspy'
    checked, broken = 0, []
    for page in pages:
        text = re.sub(r'```.*?```', '', read(page), flags=re.S)  # code is not linked
        for target in re.findall(r'\]\(([^)\s]+)\)', text):
            if re.match(r'[a-z]+:', target):  # http(s), mailto
                continue
            path, _, anchor = target.partition('#')
            path = osp.normpath(osp.join(osp.dirname(page), path)) if path else page
            if not osp.exists(osp.join(ROOT, path)):
                broken.append((page, target))
            elif anchor:
                headings = re.findall(r'^#+ (.*)$', read(path), flags=re.M)
                if anchor not in map(heading_anchor, headings):
                    broken.append((page, target))
            checked += 1
    assert not broken, broken
    assert checked > 20  # the README alone links every page of docs/


def test_ci_runs_the_readme_test_command():
    readme = read('README.md')
    assert 'make test   # the full test suite' in readme
    assert 'make test' in read('.ci/run').splitlines()[-1]
    assert 'make demo   # the main job' in readme


def test_make_demo_runs_detection_and_segmentation_by_default(monkeypatch, tmp_path, capsys):
    """`make demo` runs tools/demo.py without arguments: the det and seg tasks, then one
    table (each task's training and testing is stubbed out here; the end-to-end tests of
    detection and segmentation run the same tools)."""
    ran = []

    def run_task(task, work_root):
        ran.append(task)
        keys = demo.TASKS[task][3]
        return keys, {'before training': {k: 0.0 for k in keys},
                      'after training': {k: 0.5 for k in keys}}, osp.join(work_root, task)

    monkeypatch.setattr(demo, 'run_task', run_task)
    monkeypatch.setattr(sys, 'argv', ['demo.py', '--work-dir', str(tmp_path)])
    demo.main()
    assert ran == ['det', 'seg']
    out = capsys.readouterr().out
    assert 'bbox_mAP' in out and 'mIoU' in out and out.count('0.5000') == 6
    assert demo.parse_args(['cls', 'seg']).tasks == ['cls', 'seg']
    with pytest.raises(SystemExit):
        demo.parse_args(['classification'])
    assert 'unknown task' in capsys.readouterr().err


def test_demo_shows_a_line_per_run_and_logs_the_rest(tmp_path, capsys):
    """Each train/test run of tools/demo.py writes its output to a log in the work dir and
    shows one status line; a failed run shows the end of its log."""
    assert demo.progress_text('det/train', '12/07 10:00:00 - mmengine - INFO - Iter(train) '
                              '[ 50/200]  base_lr: 1e-04  eta: 0:00:07  time: 0.05') == (
        'det/train [######..................] train 50/200 eta 0:00:07')
    assert demo.progress_text('cls/train', 'Epoch(train)  [3][10/75]  lr: 1e-3  eta: 0:01:02'
                              ).endswith('] epoch 3 train 10/75 eta 0:01:02')
    assert demo.progress_text('seg/test_init', 'Epoch(test) [20/20]    eta: 0:00:00'
                              ).startswith('seg/test_init [########################] test')
    assert demo.progress_text('det/train', 'Saving checkpoint at 200 iterations') is None
    log = tmp_path / 'det' / 'train.log'
    demo.run('-c', 'print("Iter(train) [ 1/2]  eta: 0:00:01"); print("lots of output")',
             log=str(log))
    out = capsys.readouterr().out
    assert re.fullmatch(r'det/train: done in \d+ s\n', out)
    assert 'lots of output' in log.read_text() and 'Iter(train)' in log.read_text()
    with pytest.raises(subprocess.CalledProcessError):
        demo.run('-c', 'print("the cause"); raise SystemExit(3)',
                 log=str(tmp_path / 'det' / 'test_init.log'))
    out = capsys.readouterr().out
    assert 'det/test_init: failed (exit 3)' in out and 'the cause' in out
    assert str(tmp_path / 'det' / 'test_init.log') in out


def test_demo_saves_the_initial_weights_in_a_run_of_its_own(tmp_path, capsys):
    """The weights before training come from a run with its log, as training and testing
    do: built in the demo's own process, the toolboxes' import warnings printed between
    the status lines."""
    config = demo.TASKS['cls'][2]
    init = tmp_path / 'cls' / 'init.pth'
    demo.run('-c', demo.SAVE_INITIAL_WEIGHTS, config, str(init),
             log=str(tmp_path / 'cls' / 'init.log'))
    assert re.fullmatch(r'cls/init: done in \d+ s\n', capsys.readouterr().out)
    state = torch.load(init, weights_only=True)['state_dict']
    assert set(state) == set(build_model_from_config(osp.join(ROOT, config)).state_dict())


def test_demo_runs_from_another_folder(monkeypatch, tmp_path):
    """The train and test runs work in the repository, and tools/demo.py read their
    outputs relative to the folder it was started in: from elsewhere it failed after
    training (FileNotFoundError: 'WORK_DIR/cls/last_checkpoint'), having written the work
    dir into the repository. The tools are stood in for, as the repository sees paths."""
    import json
    ran = []

    def run(script, *args, log=None):
        ran.append(script)
        assert log.startswith(str(elsewhere / 'w' / 'cls'))  # the logs go to the work dir
        args = list(args)
        if script == 'tools/train.py':  # mmengine writes work_dir/last_checkpoint
            work = osp.join(ROOT, args[args.index('--work-dir') + 1])
            os.makedirs(work, exist_ok=True)
            with open(osp.join(work, 'last_checkpoint'), 'w') as f:
                f.write(osp.join(work, 'epoch_1.pth'))
        elif script == 'tools/test.py':
            with open(osp.join(ROOT, args[args.index('--dump-metrics') + 1]), 'w') as f:
                json.dump({'accuracy/top1': 50.0}, f)

    monkeypatch.setattr(demo, 'run', run)
    monkeypatch.setattr(demo, 'is_up_to_date', lambda *a, **k: True)
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, 'argv', ['demo.py', 'cls', '--work-dir', 'w'])
    demo.main()
    assert ran == ['tools/train.py', 'tools/test.py', '-c', 'tools/test.py']  # -c: init
    assert (elsewhere / 'w' / 'cls' / 'last_checkpoint').is_file()
    assert not osp.exists(osp.join(ROOT, 'w'))


def test_make_demo_data_writes_the_datasets(tmp_path):
    """The demo's data step, tools/make_demo_data.py KIND ROOT: every kind names a generator
    of asmlp_mm.datasets.shapes, and the command line writes a dataset."""
    import subprocess

    from asmlp_mm.datasets import shapes
    assert set(demo_data.GENERATORS) == {kind for kind, *_ in demo.TASKS.values()}
    for func, *_ in demo_data.GENERATORS.values():
        assert callable(getattr(shapes, func))
    root = tmp_path / 'cls'
    result = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'make_demo_data.py'),
                             'cls', str(root), '--num-train', '2'],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f'wrote the cls demo dataset to {root}' in result.stdout
    assert len(list((root / 'train').rglob('*.png'))) == 2 * 3  # per class
    assert demo_data.is_up_to_date(str(root), 'cls', num_train=2)


def test_demo_data_of_another_version_is_moved_aside_not_reused(tmp_path, capsys):
    """tools/demo.py reuses a dataset folder only when its manifest matches; one written
    with other arguments or by an older version (no manifest) is moved aside, not mixed
    into the new dataset, and not deleted."""
    root = str(tmp_path / 'shapes_cls')
    demo_data.write_dataset('cls', root, num_train=3)
    assert demo_data.is_up_to_date(root, 'cls', num_train=3)
    assert not demo_data.is_up_to_date(root, 'cls')  # the demo's 200 per class
    assert not demo_data.is_up_to_date(root, 'cls', seed=1, num_train=3)

    demo_data.write_dataset('cls', root, num_train=1)
    assert 'moved it to' in capsys.readouterr().out
    assert len(list((tmp_path / 'shapes_cls' / 'train').rglob('*.png'))) == 1 * 3
    assert len(list((tmp_path / 'shapes_cls.old' / 'train').rglob('*.png'))) == 3 * 3

    os.remove(osp.join(root, demo_data.MANIFEST))  # as an older version left it
    assert not demo_data.is_up_to_date(root, 'cls', num_train=1)
    demo_data.write_dataset('cls', root, num_train=1)
    assert demo_data.is_up_to_date(root, 'cls', num_train=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'shapes_cls', 'shapes_cls.old', 'shapes_cls.old-1']


INFERENCE_RUN = '''
import json, sys
namespace = json.loads(sys.argv[1])
exec(sys.argv[2], namespace)
print('asmlp_mm imported by the configs:', 'asmlp_mm' in sys.modules)
print('found', sorted(namespace['found']))
print('label map', namespace['label_map'].shape)
print('top1', namespace['top1'])
'''


def test_readme_inference_snippet_runs_with_our_configs(tmp_path):
    """The README's inference block, run as written in a process that does not import
    asmlp_mm itself, with the demo configs (random weights) on an odd-sized image."""
    import json
    import subprocess

    import numpy as np
    from PIL import Image
    readme = read('README.md')
    block = readme.split('<!-- inference -->\n```python\n', 1)[1].split('```', 1)[0]
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (61, 83, 3), np.uint8)).save(
        tmp_path / 'demo.jpg')
    names = {
        'DET_CONFIG': 'configs/demo/cascade-mask-rcnn_asmlp-demo_fpn_shapes-coco.py',
        'SEG_CONFIG': 'configs/demo/upernet_asmlp-demo_shapes-ade.py',
        'CLS_CONFIG': 'configs/demo/asmlp-demo_1xb8_shapes-cls.py'}
    names = {key: osp.join(ROOT, path) for key, path in names.items()}
    names.update(DET_CHECKPOINT=None, SEG_CHECKPOINT=None, CLS_CHECKPOINT=False)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    result = subprocess.run([sys.executable, '-c', INFERENCE_RUN, json.dumps(names), block],
                            cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert 'asmlp_mm imported by the configs: True' in out
    assert "found ['bboxes', 'labels', 'masks', 'scores']" in out
    assert 'label map (61, 83)' in out
    assert 'top1 ' in out
    # one drawing each (with one out_dir, the segmentor's replaced the detector's)
    assert [p.name for p in (tmp_path / 'outputs' / 'det').rglob('*.jpg')] == ['demo.jpg']
    assert [p.name for p in (tmp_path / 'outputs' / 'seg').rglob('*.jpg')] == ['demo.jpg']
