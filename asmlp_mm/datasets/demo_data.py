"""The demo datasets of the configs in ``configs/demo`` (:mod:`.shapes`), written with a
manifest that says what wrote them.

Each dataset folder gets a manifest (kind, seed, training images and a hash of
``shapes.py``, which draws the images). A folder whose manifest differs from what this run
would write, or that has none (written by an older version), is moved aside to
ROOT.old[-N] first, so that no stale image is mixed into the new dataset and nothing is
deleted; ``tools/demo.py`` reuses a folder only when its manifest matches.
"""
import hashlib
import json
import os
import os.path as osp

from . import shapes

# kind -> (generator function in shapes.py, default root, default training images of the
# demo config, None: the generator's)
GENERATORS = {
    'cls': ('make_classification_folder', 'data/demo/shapes_cls', 200),
    'coco': ('make_coco_dataset', 'data/demo/shapes_coco', None),
    'ade': ('make_ade_dataset', 'data/demo/shapes_ade', None),
}

#: the file in each dataset folder that says what wrote it
MANIFEST = 'make_demo_data.json'


def expected_manifest(kind, seed=0, num_train=None):
    """What a run of ``make_demo_data.py KIND --seed SEED [--num-train N]`` writes."""
    func, _, default_train = GENERATORS[kind]
    with open(shapes.__file__, 'rb') as f:
        digest = hashlib.sha1(f.read())
    return dict(kind=kind, generator=f'{shapes.__name__}.{func}',
                generator_sha1=digest.hexdigest()[:12], seed=seed,
                num_train=default_train if num_train is None else num_train)


def read_manifest(root):
    """The manifest of the dataset folder ``root``, None if it has none (or unreadable)."""
    try:
        with open(osp.join(root, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_up_to_date(root, kind, seed=0, num_train=None):
    return read_manifest(root) == expected_manifest(kind, seed, num_train)


def move_aside(root):
    """Rename ``root`` to the first free ``root.old``, ``root.old-1``, ...; return it."""
    base = root.rstrip('/\\') + '.old'
    target, n = base, 0
    while osp.exists(target):
        n += 1
        target = f'{base}-{n}'
    os.rename(root, target)
    return target


def write_dataset(kind, root=None, seed=0, num_train=None):
    """Write the ``kind`` demo dataset to ``root`` (default: the kind's) with its manifest.

    An existing non-empty folder of another manifest (or none) is moved aside first.
    Returns the dataset root.
    """
    func, default_root, _ = GENERATORS[kind]
    root = root or default_root
    manifest = expected_manifest(kind, seed, num_train)
    if osp.isdir(root) and os.listdir(root) and read_manifest(root) != manifest:
        old = move_aside(root)
        print(f'{root} was written by another version or with other arguments of '
              f'make_demo_data.py (manifest {read_manifest(old)}); moved it to {old}')
    counts = {} if manifest['num_train'] is None else {'num_train': manifest['num_train']}
    root = getattr(shapes, func)(root, seed=seed, **counts)
    with open(osp.join(root, MANIFEST), 'w') as f:
        json.dump(manifest, f, indent=1)
    return root
