"""The README's promises: its zoo table comes from the metafiles, CI runs its test command."""
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis'))
sys.path.insert(0, osp.join(ROOT, 'tools'))

from model_zoo_table import readme_zoo, zoo_markdown  # noqa: E402


def read(path):
    with open(osp.join(ROOT, path)) as f:
        return f.read()


def test_readme_zoo_table_matches_metafiles():
    assert readme_zoo(read('README.md')) == zoo_markdown().strip('\n'), \
        'README zoo out of date: run python tools/analysis/model_zoo_table.py --write-readme'


def test_ci_runs_the_readme_test_command():
    readme = read('README.md')
    assert 'make test   # the full test suite' in readme
    assert 'make test' in read('.ci/run').splitlines()[-1]
    assert 'make demo   # the main job' in readme


def test_make_demo_runs_detection_and_segmentation_by_default(monkeypatch, tmp_path, capsys):
    """`make demo` runs tools/demo.py without arguments: the det and seg tasks, then one
    table (each task's training and testing is stubbed out here; the end-to-end tests of
    detection and segmentation run the same tools)."""
    import demo
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
