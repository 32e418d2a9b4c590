"""The paper's figures, read from the model zoo metafiles (the one place they are written).

``model-index.yml`` at the repository root imports one ``metafile.yml`` per config folder
in the OpenMMLab format. Each model entry names its config and carries the paper's results,
``Parameters`` and ``FLOPs`` (multiply-accumulates) and ``FLOPs Input Shape`` ("(H,W)"),
the input size the paper's FLOPs were counted at; classifiers also the paper's ``Throughput
(img/s)``.

Where the authors published the checkpoint, ``Converted From`` says where it comes from, as
mmpretrain's metafiles do for converted checkpoints: ``Weights`` (the page the authors'
README links to), ``Code`` (their repository), ``File`` (the file's name, where their code
names it) and ``Command`` (the conversion into this project's layout). As in mmpretrain, an
entry's ``Weights`` is a checkpoint of this project that its ``Results`` were measured
with; an entry without it has the paper's results.
"""
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import yaml

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
MODEL_INDEX = 'model-index.yml'
#: the fields every ``Converted From`` entry has (``File`` only where the authors name it)
CONVERTED_FROM_FIELDS = ('Weights', 'Code', 'Command')


@dataclass(frozen=True)
class PaperModel:
    """One model of the zoo.

    Args:
        name (str): Model name (the config's file name without ``.py``).
        config (str): Config path relative to the repository root.
        collection (str): Name of its collection (e.g. 'AS-MLP').
        params (int, optional): Parameter count the paper gives.
        flops (int, optional): Multiply-accumulates the paper gives.
        flops_shape (tuple, optional): (H, W) of the input the paper's FLOPs refer to.
        results (list[dict]): ``{'Task', 'Dataset', 'Metrics'}`` entries.
        metadata (dict): The entry's whole ``Metadata`` mapping.
        weights (str, optional): A checkpoint of this project the results were measured
            with; ``None``: the results are the paper's.
        converted_from (dict, optional): The authors' published checkpoint: ``Weights``
            (its download page), ``Code``, ``Command`` and, where known, ``File``.
    """
    name: str
    config: str
    collection: str
    params: Optional[int]
    flops: Optional[int]
    flops_shape: Optional[Tuple[int, int]]
    results: List[dict] = field(default_factory=list)
    metadata: Dict = field(default_factory=dict)
    weights: Optional[str] = None
    converted_from: Optional[Dict[str, str]] = None

    @property
    def task(self) -> str:
        """The first result's task, e.g. 'Image Classification' or 'Object Detection'."""
        return self.results[0]['Task'] if self.results else ''

    @property
    def reproduced(self) -> bool:
        """Whether the results were measured here (from :attr:`weights`), not the paper's."""
        return self.weights is not None

    @property
    def throughput(self) -> Optional[float]:
        """The paper's inference throughput in images/s (classifiers), or ``None``."""
        return self.metadata.get('Throughput (img/s)')

    def config_path(self, root: str = REPO_ROOT) -> str:
        return osp.join(root, self.config)

    def metrics(self) -> Dict[str, float]:
        """All metrics of all results in one mapping, e.g. {'box AP': 44.0, 'mask AP': 40.0}."""
        merged = {}
        for result in self.results:
            merged.update(result.get('Metrics', {}))
        return merged


def _read_yaml(path: str):
    if not osp.isfile(path):
        raise FileNotFoundError(f'model zoo file {path!r} does not exist')
    with open(path) as f:
        return yaml.safe_load(f) or {}


def _parse_model(entry: dict, metafile: str) -> PaperModel:
    for key in ('Name', 'Config', 'In Collection'):
        if key not in entry:
            raise ValueError(f'{metafile}: model entry {entry.get("Name", entry)!r} has no '
                             f'{key!r} field')
    meta = entry.get('Metadata', {}) or {}
    shape = meta.get('FLOPs Input Shape')
    if shape is not None:
        # text, as mmseg writes its "Crop Size": mim's search takes no list of numbers
        match = re.fullmatch(r'\((\d+), *(\d+)\)', str(shape))
        if match is None:
            raise ValueError(f'{metafile}: "FLOPs Input Shape" of {entry["Name"]} must be '
                             f'"(H,W)", got {shape!r}')
        shape = (int(match.group(1)), int(match.group(2)))
    results = entry.get('Results', [])
    if isinstance(results, dict):  # a single result may be written without a list
        results = [results]
    converted = entry.get('Converted From')
    if converted is not None:
        missing = [k for k in CONVERTED_FROM_FIELDS if not isinstance(converted, dict)
                   or not isinstance(converted.get(k), str) or not converted[k]]
        if missing:
            raise ValueError(f'{metafile}: "Converted From" of {entry["Name"]} needs the '
                             f'fields {CONVERTED_FROM_FIELDS} (text); missing or empty: '
                             f'{missing}')
        converted = dict(converted)
    return PaperModel(
        name=entry['Name'], config=entry['Config'], collection=entry['In Collection'],
        params=meta.get('Parameters'), flops=meta.get('FLOPs'),
        flops_shape=shape,
        results=list(results), metadata=dict(meta), weights=entry.get('Weights'),
        converted_from=converted)


def metafile_paths(root: str = REPO_ROOT) -> List[str]:
    """The metafiles ``model-index.yml`` imports, as absolute paths."""
    index = _read_yaml(osp.join(root, MODEL_INDEX))
    return [osp.join(root, p) for p in index.get('Import', [])]


def load_models(root: str = REPO_ROOT) -> List[PaperModel]:
    """Every model entry of every metafile that ``model-index.yml`` imports."""
    models = []
    for path in metafile_paths(root):
        models += [_parse_model(m, path) for m in _read_yaml(path).get('Models', [])]
    return models


def find_model(config: str, root: str = REPO_ROOT) -> Optional[PaperModel]:
    """The zoo entry whose config is ``config`` (a path, or a model name), or ``None``."""
    target = osp.splitext(osp.basename(config))[0]
    for model in load_models(root):
        if model.name == target or osp.splitext(osp.basename(model.config))[0] == target:
            return model
    return None
