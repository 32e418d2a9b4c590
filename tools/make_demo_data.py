"""Write the tiny synthetic datasets used by the demo configs and the tests.

    python tools/make_demo_data.py cls  [ROOT]   # image folders   (default data/demo/shapes_cls)
    python tools/make_demo_data.py coco [ROOT]   # COCO instances  (default data/demo/shapes_coco)
    python tools/make_demo_data.py ade  [ROOT]   # ADE20K layout   (default data/demo/shapes_ade)
"""
import argparse
import importlib
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

# kind -> (module in asmlp_mm.datasets, generator function, default root)
GENERATORS = {
    'cls': ('shapes', 'make_classification_folder', 'data/demo/shapes_cls'),
    'coco': ('coco', 'make_coco_dataset', 'data/demo/shapes_coco'),
    'ade': ('ade', 'make_ade_dataset', 'data/demo/shapes_ade'),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('kind', choices=sorted(GENERATORS))
    parser.add_argument('root', nargs='?', help='output folder')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    module, func, default_root = GENERATORS[args.kind]
    generate = getattr(importlib.import_module(f'asmlp_mm.datasets.{module}'), func)
    root = generate(args.root or default_root, seed=args.seed)
    print(f'wrote the {args.kind} demo dataset to {root}')


if __name__ == '__main__':
    main()
