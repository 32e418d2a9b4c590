"""Write the tiny synthetic datasets used by the demo configs and the tests.

    python tools/make_demo_data.py cls  [ROOT]   # image folders   (default data/demo/shapes_cls)
    python tools/make_demo_data.py coco [ROOT]   # COCO instances  (default data/demo/shapes_coco)
    python tools/make_demo_data.py ade  [ROOT]   # ADE20K layout   (default data/demo/shapes_ade)

--num-train N sets the number of training images (per class for cls). The default is 200
per class for cls, the count configs/demo/asmlp-demo_1xb8_shapes-cls.py is made for (on 20
the classifier remembers the images' colours instead of learning the shapes), and the
generator's own for coco (48) and ade (64).

Each dataset folder gets a manifest (kind, seed, training images and a hash of the
generator's source and of shapes.py, which draws the images). A folder whose manifest
differs from what this run would write, or that has none (written by an older version), is
moved aside to ROOT.old[-N] first, so that no stale image is mixed into the new dataset and
nothing is deleted; tools/demo.py reuses a folder only when its manifest matches.
"""
import argparse
import hashlib
import importlib
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

# kind -> (module in asmlp_mm.datasets, generator function, default root, default
# training images of the demo config, None: the generator's)
GENERATORS = {
    'cls': ('shapes', 'make_classification_folder', 'data/demo/shapes_cls', 200),
    'coco': ('coco', 'make_coco_dataset', 'data/demo/shapes_coco', None),
    'ade': ('ade', 'make_ade_dataset', 'data/demo/shapes_ade', None),
}

#: the file in each dataset folder that says what wrote it
MANIFEST = 'make_demo_data.json'


def expected_manifest(kind, seed=0, num_train=None):
    """What a run of ``make_demo_data.py KIND --seed SEED [--num-train N]`` writes."""
    module, func, _, default_train = GENERATORS[kind]
    digest = hashlib.sha1()
    for name in sorted({module, 'shapes'}):  # shapes.py draws the images of all three
        with open(importlib.import_module(f'asmlp_mm.datasets.{name}').__file__, 'rb') as f:
            digest.update(f.read())
    return dict(kind=kind, generator=f'asmlp_mm.datasets.{module}.{func}',
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
    module, func, default_root, _ = GENERATORS[kind]
    root = root or default_root
    manifest = expected_manifest(kind, seed, num_train)
    if osp.isdir(root) and os.listdir(root) and read_manifest(root) != manifest:
        old = move_aside(root)
        print(f'{root} was written by another version or with other arguments of '
              f'make_demo_data.py (manifest {read_manifest(old)}); moved it to {old}')
    generate = getattr(importlib.import_module(f'asmlp_mm.datasets.{module}'), func)
    counts = {} if manifest['num_train'] is None else {'num_train': manifest['num_train']}
    root = generate(root, seed=seed, **counts)
    with open(osp.join(root, MANIFEST), 'w') as f:
        json.dump(manifest, f, indent=1)
    return root


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('kind', choices=sorted(GENERATORS))
    parser.add_argument('root', nargs='?', help='output folder')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-train', type=int,
                        help='training images (per class for cls); default: 200 for cls, '
                        "the generator's for coco and ade")
    args = parser.parse_args()
    root = write_dataset(args.kind, args.root, args.seed, args.num_train)
    print(f'wrote the {args.kind} demo dataset to {root}')


if __name__ == '__main__':
    main()
