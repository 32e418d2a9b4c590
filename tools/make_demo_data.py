"""Write the tiny synthetic datasets used by the demo configs and the tests.

    python tools/make_demo_data.py cls  [ROOT]   # image folders   (default data/demo/shapes_cls)
    python tools/make_demo_data.py coco [ROOT]   # COCO instances  (default data/demo/shapes_coco)
    python tools/make_demo_data.py ade  [ROOT]   # ADE20K layout   (default data/demo/shapes_ade)

--num-train N sets the number of training images (per class for cls). The default is 200
per class for cls, the count configs/demo/asmlp-demo_1xb8_shapes-cls.py is made for (on 20
the classifier remembers the images' colours instead of learning the shapes), and the
generator's own for coco (48) and ade (64).

Each dataset folder gets a manifest of what wrote it; a folder of another manifest is moved
aside first (asmlp_mm/datasets/demo_data.py).
"""
import argparse

from asmlp_mm.datasets.demo_data import GENERATORS, write_dataset


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
