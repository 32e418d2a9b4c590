"""The main job on the embedded default: tiny datasets, train, test, draw the predictions.

    python tools/demo.py [det] [seg] [cls] [--work-dir work_dirs/demo]

It runs from any folder: the datasets go to the repository's data/demo/, the work dir is
relative to the folder it is started in.

For each task (default: det and seg) it writes the synthetic shapes dataset (unless
tools/make_demo_data.py wrote the same one before: see its manifest), trains the
demo config through tools/train.py, evaluates before and after training through
tools/test.py (COCO box/mask AP; single-scale and multi-scale+flip mIoU; top-1), saves the
drawn predictions in the work dir and prints one table at the end, every metric in %
(mmdet's COCO metrics, fractions, are multiplied by 100; mmseg's and mmpretrain's already
are percentages).

The train and test runs are single-threaded (OMP_NUM_THREADS=1) unless OMP_NUM_THREADS is
set: the tiny models gain nothing from more threads, a second thread on a busy 2-core
machine makes every step many times slower, and the CPU kernels' results (so the AP/mIoU
after training) depend on the thread count. With it the whole demo (det and seg) takes
about a minute and a half on 2 CPU cores and gives the same numbers every run. Set
OMP_NUM_THREADS to choose otherwise.
"""
import argparse
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time
from typing import Optional

from asmlp_mm.datasets.demo_data import is_up_to_date

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PY = sys.executable

# task -> (data kind for make_demo_data.py, data folder, config, metrics to report,
#          extra test runs {name: extra test.py args})
TASKS = {
    'det': ('coco', 'data/demo/shapes_coco',
            'configs/demo/cascade-mask-rcnn_asmlp-demo_fpn_shapes-coco.py',
            ['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'],
            {}),
    'seg': ('ade', 'data/demo/shapes_ade', 'configs/demo/upernet_asmlp-demo_shapes-ade.py',
            ['mIoU', 'aAcc'], {'ms+flip': ['--tta']}),
    'cls': ('cls', 'data/demo/shapes_cls', 'configs/demo/asmlp-demo_1xb8_shapes-cls.py',
            ['accuracy/top1'], {}),
}

#: factor that turns each task's metrics into % (mmdet's COCO AP is a fraction)
TO_PERCENT = {'det': 100.0, 'seg': 1.0, 'cls': 1.0}

#: threads of the train and test subprocesses when the environment sets no OMP_NUM_THREADS
DEFAULT_THREADS = '1'


#: mmengine's progress lines: "Iter(train) [ 50/200]  ... eta: 0:00:07" (iteration-based
#: training), "Epoch(train)  [3][10/75]  ... eta: ..." and "Epoch(test) [10/20]  eta: ..."
PROGRESS = re.compile(r'(?:Iter|Epoch)\((?P<mode>train|val|test)\)\s*(?:\[\s*(?P<epoch>\d+)\])?'
                      r'\s*\[\s*(?P<done>\d+)/(?P<total>\d+)\](?:.*?eta: (?P<eta>[\d:]+))?')


def progress_text(label: str, line: str) -> Optional[str]:
    """One status line for a run from one of its log lines, or None where the line tells no
    progress."""
    match = PROGRESS.search(line)
    if match is None:
        return None
    done, total = int(match['done']), int(match['total'])
    filled = 24 * done // max(total, 1)
    epoch = f'epoch {match["epoch"]} ' if match['epoch'] else ''
    eta = f' eta {match["eta"]}' if match['eta'] else ''
    return (f'{label} [{"#" * filled}{"." * (24 - filled)}] {epoch}{match["mode"]} '
            f'{done}/{total}{eta}')


def run(*args, log: Optional[str] = None):
    """``python ARGS`` in the repository. With ``log``, the run's output goes to that file
    and the terminal shows one status line for it (progress and ETA from mmengine's log
    lines); a failed run prints the end of its log."""
    env = dict(os.environ)
    env.setdefault('OMP_NUM_THREADS', DEFAULT_THREADS)
    command = ' '.join(['+', f'OMP_NUM_THREADS={env["OMP_NUM_THREADS"]}', *args])
    if log is None:
        print(command, flush=True)
        subprocess.run([PY, *args], cwd=ROOT, check=True, env=env)
        return
    os.makedirs(osp.dirname(log), exist_ok=True)
    label = f'{osp.basename(osp.dirname(log))}/{osp.splitext(osp.basename(log))[0]}'
    live = sys.stdout.isatty()  # one line redrawn in a terminal, a line per run elsewhere
    start, shown = time.time(), ''
    with open(log, 'w') as f:
        f.write(command + '\n')
        with subprocess.Popen([PY, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:
                f.write(line)
                status = progress_text(label, line)
                if live and status:
                    shown = status
                    print('\r' + status[:119].ljust(119), end='', flush=True)
    seconds = time.time() - start
    if proc.returncode != 0:
        print(('\n' if shown else '') + f'{label}: failed (exit {proc.returncode}) after '
              f'{seconds:.0f} s; the end of its log, {log}:')
        with open(log) as f:
            print(''.join(f.readlines()[-30:]), end='')
        raise subprocess.CalledProcessError(proc.returncode, [PY, *args])
    done = f'{label}: done in {seconds:.0f} s'
    print('\r' + done.ljust(119) if live else done, flush=True)


#: ``python -c`` code that saves the weights a training run of a config starts from: a run
#: of its own, whose output (the toolboxes' warnings, mmengine's table of every initialized
#: weight) goes to its log as the other runs' does
SAVE_INITIAL_WEIGHTS = ('import sys; from asmlp_mm.analysis import save_initial_weights; '
                        'save_initial_weights(*sys.argv[1:])')


def evaluate(config, checkpoint, work_dir, name, extra=()):
    metrics_file = osp.join(work_dir, f'metrics_{name}.json')
    run('tools/test.py', config, checkpoint, '--work-dir', work_dir,
        '--dump-metrics', metrics_file, *extra, log=osp.join(work_dir, f'test_{name}.log'))
    with open(metrics_file) as f:
        return json.load(f)


def run_task(task, work_root):
    kind, data_root, config, keys, extra_tests = TASKS[task]
    work_dir = osp.join(work_root, task)
    if not is_up_to_date(osp.join(ROOT, data_root), kind):
        run('tools/make_demo_data.py', kind, data_root, log=osp.join(work_dir, 'data.log'))
    run('tools/train.py', config, '--work-dir', work_dir,
        log=osp.join(work_dir, 'train.log'))
    ckpt = osp.join(work_dir, 'last_checkpoint')
    with open(ckpt) as f:
        trained = f.read().strip()
    results = {'after training': evaluate(config, trained, work_dir, 'trained',
                                          ['--show-dir', 'predictions'])}
    for name, args in extra_tests.items():
        results[f'after training, {name}'] = evaluate(config, trained, work_dir, name,
                                                      list(args))
    init = osp.join(work_dir, 'init.pth')
    run('-c', SAVE_INITIAL_WEIGHTS, config, init, log=osp.join(work_dir, 'init.log'))
    results['before training'] = evaluate(config, init, work_dir, 'init')
    scale = TO_PERCENT[task]
    results = {name: {k: v * scale if k in keys else v for k, v in row.items()}
               for name, row in results.items()}
    return keys, results, work_dir


#: what runs without task arguments
DEFAULT_TASKS = ['det', 'seg']


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='environment: OMP_NUM_THREADS (default for the train/test runs: '
        f'{DEFAULT_THREADS}; now: {os.environ.get("OMP_NUM_THREADS", "unset")})')
    # checked below, not with choices=: argparse (3.11) checks the value of an empty
    # nargs='*' positional, a list, against the choices as a whole and rejects it
    parser.add_argument('tasks', nargs='*', metavar='{' + ','.join(sorted(TASKS)) + '}',
                        help=f'tasks to run (default: {" ".join(DEFAULT_TASKS)})')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    args = parser.parse_args(argv)
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        parser.error(f'unknown task(s) {unknown}; choose from {sorted(TASKS)}')
    args.tasks = args.tasks or list(DEFAULT_TASKS)
    return args


def main():
    args = parse_args()
    # the train and test runs work in the repository (the configs name data/demo/...
    # relative to it); the work dir is where the user means it, from where they are
    args.work_dir = osp.abspath(args.work_dir)
    os.makedirs(args.work_dir, exist_ok=True)
    summary = []
    for task in args.tasks:
        summary.append((task, *run_task(task, args.work_dir)))
    print('\n' + '=' * 72)
    for task, keys, results, work_dir in summary:
        print(f'{task}: {TASKS[task][2]}')
        print(f'  {"(all metrics in %)":28s}' + ''.join(f'{k.split("/")[-1]:>15s}'
                                                        for k in keys))
        for name in ['before training'] + [n for n in results if n != 'before training']:
            row = results[name]
            print(f'  {name:28s}' + ''.join(
                f'{row.get(k, float("nan")):15.4f}' for k in keys))
        print(f'  drawn predictions: {work_dir}/**/predictions/')
        print(f'  logs of the runs: {work_dir}/*.log (mmengine\'s own: {work_dir}/2*/)')
    print(f'OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", DEFAULT_THREADS)} '
          'for the train and test runs')
    print('=' * 72)


if __name__ == '__main__':
    main()
