"""The README's promises: its zoo table comes from the metafiles, CI runs its test command."""
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis'))

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
