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


README_BEGIN, README_END = '<!-- zoo-table -->', '<!-- /zoo-table -->'


def _split_readme(readme_text: str):
    """(text before the zoo section, the section, text after it): the section is what lies
    between the first zoo-table marker and the end marker after it."""
    head, begin, rest = readme_text.partition(README_BEGIN)
    section, end, tail = rest.partition(README_END)
    if not begin or not end:
        raise ValueError(f'README has no {README_BEGIN} ... {README_END} section')
    return head, section, tail


def readme_zoo(readme_text: str) -> str:
    """The part of the README between the zoo-table markers."""
    return _split_readme(readme_text)[1].strip('\n')


def write_readme(root: str = paper.REPO_ROOT) -> str:
    """Replace the README's zoo section with the tables from the metafiles."""
    path = osp.join(root, 'README.md')
    with open(path) as f:
        text = f.read()
    head, _, tail = _split_readme(text)
    text = f'{head}{README_BEGIN}\n{zoo_markdown(root).strip(chr(10))}\n{README_END}{tail}'
    with open(path, 'w') as f:
        f.write(text)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description='The model zoo as Markdown tables')
    parser.add_argument('--root', default=paper.REPO_ROOT,
                        help='repository root holding model-index.yml')
    parser.add_argument('--write-readme', action='store_true',
                        help='update the zoo section of README.md in place')
    args = parser.parse_args(argv)
    if args.write_readme:
        print(f'updated {write_readme(args.root)}')
    else:
        print(zoo_markdown(args.root))


if __name__ == '__main__':
    main()
