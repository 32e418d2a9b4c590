"""Print the model zoo (the paper's figures in the metafiles) as Markdown tables.

One table per collection, one row per model: its config, its metrics, parameters and FLOPs
(multiply-accumulates, at the input size given), whose numbers they are (the paper's, or
reproduced here with a checkpoint of this project: an entry with ``Weights``) and the
authors' published checkpoint, if any; under the table, the commands that convert those
checkpoints. The README's model zoo is this output, so the figures live in one place
(``model-index.yml`` and the metafiles).

Example::

    python tools/analysis/model_zoo_table.py > zoo.md
"""
import argparse
import os.path as osp
from collections import OrderedDict
from typing import List

from asmlp_mm.analysis import paper


def _metric_names(models: List[paper.PaperModel]) -> List[str]:
    names = []
    for model in models:
        names += [m for m in model.metrics() if m not in names]
    return names


def _size(value, unit: float, suffix: str) -> str:
    return f'{value / unit:g}{suffix}' if value else '-'


def _numbers(model: paper.PaperModel) -> str:
    return f'[reproduced here]({model.weights})' if model.reproduced else 'paper'


def _published(model: paper.PaperModel) -> str:
    source = model.converted_from
    return f'[OneDrive]({source["Weights"]})' if source else 'none published'


def collection_table(models: List[paper.PaperModel]) -> str:
    """A Markdown table of the models of one collection."""
    metrics = _metric_names(models)
    header = ['config', *metrics, 'params', 'FLOPs', 'FLOPs input (HxW)', 'numbers',
              "authors' checkpoint"]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for model in models:
        values = model.metrics()
        shape = 'x'.join(str(v) for v in model.flops_shape) if model.flops_shape else '-'
        row = [f'[{model.name}]({model.config})',
               *[f'{values[m]:.1f}' if m in values else '-' for m in metrics],
               _size(model.params, 1e6, 'M'), _size(model.flops, 1e9, 'G'), shape,
               _numbers(model), _published(model)]
        lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines)


def conversion_commands(models: List[paper.PaperModel]) -> str:
    """The commands that convert the published checkpoints of ``models`` ('' if none)."""
    lines = []
    for model in models:
        source = model.converted_from
        if source:
            named = f' (`{source["File"]}`)' if 'File' in source else ''
            lines.append(f'- {model.name}{named}: `{source["Command"]}`')
    return '\n'.join(lines)


def zoo_markdown(root: str = paper.REPO_ROOT) -> str:
    """All collections, each under a heading, then what the columns mean."""
    models = paper.load_models(root)
    groups = OrderedDict()
    for model in models:
        groups.setdefault(model.collection, []).append(model)
    parts = []
    for name, members in groups.items():
        commands = conversion_commands(members)
        commands = f'\n\nConverting the published checkpoints:\n\n{commands}' if commands else ''
        parts.append(f'### {name}\n\n{collection_table(members)}{commands}')
    reproduced = [m.name for m in models if m.reproduced]
    status = (f'reproduced here: {", ".join(reproduced)}' if reproduced else
              'none has been reproduced here yet')
    notes = (f'FLOPs are multiply-accumulates. "numbers": whose the row\'s metrics, '
             f'parameters and FLOPs are, the paper\'s or reproduced here with a checkpoint '
             f'of this project ({status}).')
    if any(m.converted_from for m in models):
        notes += (' In a conversion command, SRC.pth stands for the file as downloaded '
                  'where the authors\' code names none.')
    return '\n\n'.join(parts) + f'\n\n{notes}\n'


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
