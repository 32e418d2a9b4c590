"""The paper's figures, read from the model zoo metafiles (the one place they are written)
with ``modelindex``, the reader of OpenMMLab's model index (``mim search`` uses it).

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

from modelindex.load_model_index import load

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
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


def _check_entry(model, metafile: str) -> None:
    """Refuse a model entry without the fields the tools read, with its metafile."""
    for key, value in (('Name', model.name), ('Config', model.config),
                       ('In Collection', model.in_collection)):
        if not value:
            raise ValueError(f'{metafile}: model entry {model.name or model.data!r} has no '
                             f'{key!r} field')


def _flops_shape(shape, name: str, metafile: str) -> Optional[Tuple[int, int]]:
    if shape is None:
        return None
    # text, as mmseg writes its "Crop Size": mim's search takes no list of numbers
    match = re.fullmatch(r'\((\d+), *(\d+)\)', str(shape))
    if match is None:
        raise ValueError(f'{metafile}: "FLOPs Input Shape" of {name} must be "(H,W)", got '
                         f'{shape!r}')
    return int(match.group(1)), int(match.group(2))


def _converted_from(converted, name: str, metafile: str) -> Optional[Dict[str, str]]:
    if converted is None:
        return None
    missing = [k for k in CONVERTED_FROM_FIELDS if not isinstance(converted, dict)
               or not isinstance(converted.get(k), str) or not converted[k]]
    if missing:
        raise ValueError(f'{metafile}: "Converted From" of {name} needs the fields '
                         f'{CONVERTED_FROM_FIELDS} (text); missing or empty: {missing}')
    return dict(converted)


def _paper_model(model) -> PaperModel:
    """A :class:`PaperModel` of a ``modelindex`` model entry."""
    metafile = model.filepath
    _check_entry(model, metafile)
    meta = dict(model.metadata.data) if model.metadata is not None else {}
    return PaperModel(
        name=model.name, config=model.config, collection=model.in_collection,
        params=meta.get('Parameters'), flops=meta.get('FLOPs'),
        flops_shape=_flops_shape(meta.get('FLOPs Input Shape'), model.name, metafile),
        results=[dict(Task=r.task, Dataset=r.dataset, Metrics=r.metrics)
                 for r in model.results or []],
        metadata=meta, weights=model.weights,
        converted_from=_converted_from(model.data.get('Converted From'), model.name,
                                       metafile))


def load_models(root: str = REPO_ROOT) -> List[PaperModel]:
    """Every model entry of every metafile that ``model-index.yml`` imports."""
    index = osp.join(root, MODEL_INDEX)
    if not osp.isfile(index):
        raise FileNotFoundError(f'model zoo file {index!r} does not exist')
    return [_paper_model(model) for model in load(index).models]


def find_model(config: str, root: str = REPO_ROOT) -> Optional[PaperModel]:
    """The zoo entry whose config is ``config`` (a path, or a model name), or ``None``."""
    target = osp.splitext(osp.basename(config))[0]
    for model in load_models(root):
        if model.name == target or osp.splitext(osp.basename(model.config))[0] == target:
            return model
    return None
