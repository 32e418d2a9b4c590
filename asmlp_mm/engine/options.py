"""``--cfg-options`` checked before it is merged into a config, for every tool.

mmengine merges any ``KEY=VALUE`` into the config: a new top-level key that nothing reads
(a typo) or a variable of the config file, which mmengine put in place as it read the file,
then changes nothing, silently.
"""
import difflib
import inspect
from typing import Optional

from mmengine.config import Config
from mmengine.runner import Runner


class CfgOptionsError(ValueError):
    """A ``--cfg-options`` entry that would change nothing."""


def merge_cfg_options(cfg: Config, options: Optional[dict], config_path: str) -> Config:
    """Check ``options`` (:func:`check_cfg_options`), then merge them into ``cfg``."""
    if options:
        check_cfg_options(cfg, options, config_path)
        cfg.merge_from_dict(options)
    return cfg


#: top-level entries the runner (or tools/test.py) reads besides its own arguments
READ_FROM_CFG = {'model_wrapper_cfg', 'sync_bn', 'find_unused_parameters', 'compile',
                 'tta_model', 'tta_pipeline'}


def check_cfg_options(cfg: Config, options: dict, config_path: str) -> None:
    """Refuse a ``--cfg-options`` entry whose top-level key nothing reads.

    - A new key (``test_dataloder.batch_size=1``) would be added to the config and then
      ignored, silently: refused, naming the closest key.
    - A variable of the config file (``pretrained``, ``data_root``, ``crop_size``) was
      substituted where the file uses it when the file was read: setting it changes nothing
      (a detector then loads the default pretrained file, not the given one). Refused,
      naming the entries that hold its value.

    The runner's arguments and the few entries the runner and tools/test.py read from the
    config are accepted (``data_preprocessor`` only where the model has none: mmseg's
    configs write theirs into the model). Raises :class:`CfgOptionsError`.
    """
    read = set(inspect.signature(Runner.__init__).parameters) - {'self'} | READ_FROM_CFG
    model_has_one = isinstance(cfg.get('model'), dict) and \
        cfg.model.get('data_preprocessor') is not None
    for key in dict.fromkeys(option.split('.')[0] for option in options):
        if key == 'data_preprocessor' and model_has_one:
            raise CfgOptionsError(
                f'--cfg-options data_preprocessor: the model of {config_path} has its own, '
                f'which the runner keeps (it uses the top-level one only for a model '
                f'without one), so setting it changes nothing. Set model.data_preprocessor '
                f'instead')
        if key in read:
            continue
        if key not in cfg:
            close = difflib.get_close_matches(key, sorted(set(cfg.keys()) | read), n=1)
            hint = f' (did you mean {close[0]!r}?)' if close else ''
            raise CfgOptionsError(
                f'--cfg-options {key}: {config_path} has no entry {key!r} and the runner '
                f'reads none{hint}; set new entries in a config that inherits this one')
        uses = entries_holding({k: v for k, v in cfg.items() if k in read}, cfg[key])
        where = (f': {", ".join(uses[:6])}{" and more" if len(uses) > 6 else ""}' if uses
                 else f' (see where the file uses {key})')
        raise CfgOptionsError(
            f'--cfg-options {key}: {key!r} is a variable of {config_path}: its value was put '
            f'where the file uses it when the file was read, and nothing reads it after, so '
            f'setting it changes nothing. Set the entries that hold its value instead{where}')


def entries_holding(entries: dict, value) -> list:
    """Dotted keys of the items of ``entries`` (nested dicts and lists) that hold ``value``,
    or for a string (a path such as ``data_root``), a string that starts with it. Empty for
    numbers, booleans and None, which many unrelated entries share."""
    if value is None or isinstance(value, (bool, int, float)) or value == '':
        return []

    def holds(item):
        if isinstance(value, str):
            return isinstance(item, str) and item.startswith(value)
        return item == value

    found = []

    def walk(item, path):
        if path and holds(item):
            found.append(path)
            return
        children = item.items() if isinstance(item, dict) else (
            enumerate(item) if isinstance(item, (list, tuple)) else ())
        for name, child in children:
            walk(child, f'{path}.{name}' if path else str(name))

    walk(entries, '')
    return found
