"""Write the tiny synthetic datasets used by the demo configs and the tests.

    python tools/make_demo_data.py cls  [ROOT]   # image folders   (default data/demo/shapes_cls)
    python tools/make_demo_data.py coco [ROOT]   # COCO instances  (default data/demo/shapes_coco)
    python tools/make_demo_data.py ade  [ROOT]   # ADE20K layout   (default data/demo/shapes_ade)

--num-train N sets the number of training images (per class for cls). The default is 200
per class for cls, the count configs/demo/asmlp-demo_1xb8_shapes-cls.py is made for (on 20
the classifier remembers the images' colours instead of learning the shapes), and the
generator's own for coco (48) and ade (64).
"""
import argparse
import importlib
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
    module, func, default_root, default_train = GENERATORS[args.kind]
    generate = getattr(importlib.import_module(f'asmlp_mm.datasets.{module}'), func)
    num_train = default_train if args.num_train is None else args.num_train
    counts = {} if num_train is None else {'num_train': num_train}
    root = generate(args.root or default_root, seed=args.seed, **counts)
    print(f'wrote the {args.kind} demo dataset to {root}')


if __name__ == '__main__':
    main()
