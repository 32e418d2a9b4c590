"""Print the model zoo (the paper's figures in the metafiles) as Markdown tables.

One table per collection, one row per model: its config, the paper's metrics, parameters
and FLOPs (multiply-accumulates, at the input size given). The README's model zoo is this
output, so the figures live in one place (``model-index.yml`` and the metafiles).

Example::

    python tools/analysis/model_zoo_table.py > zoo.md
"""
import argparse
import os.path as osp
import sys
from collections import OrderedDict
from typing import List

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from asmlp_mm import paper  # noqa: E402


def _metric_names(models: List[paper.PaperModel]) -> List[str]:
    names = []
    for model in models:
        names += [m for m in model.metrics() if m not in names]
    return names


def _size(value, unit: float, suffix: str) -> str:
    return f'{value / unit:g}{suffix}' if value else '-'


def collection_table(models: List[paper.PaperModel]) -> str:
    """A Markdown table of the models of one collection."""
    metrics = _metric_names(models)
    header = ['config', *metrics, 'params', 'FLOPs', 'FLOPs input (HxW)']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for model in models:
        values = model.metrics()
        shape = 'x'.join(str(v) for v in model.flops_shape) if model.flops_shape else '-'
        row = [f'[{model.name}]({model.config})',
               *[f'{values[m]:.1f}' if m in values else '-' for m in metrics],
               _size(model.params, 1e6, 'M'), _size(model.flops, 1e9, 'G'), shape]
        lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines)


def zoo_markdown(root: str = paper.REPO_ROOT) -> str:
    """All collections, each under a heading."""
    groups = OrderedDict()
    for model in paper.load_models(root):
        groups.setdefault(model.collection, []).append(model)
    parts = [f'### {name}\n\n{collection_table(models)}' for name, models in groups.items()]
    return '\n\n'.join(parts) + '\n\nFLOPs are multiply-accumulates.\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description='The model zoo as Markdown tables')
    parser.add_argument('--root', default=paper.REPO_ROOT,
                        help='repository root holding model-index.yml')
    args = parser.parse_args(argv)
    print(zoo_markdown(args.root))


if __name__ == '__main__':
    main()
