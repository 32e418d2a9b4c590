"""Throughput (images/s) and peak memory of asmlp-mm models, and AS-MLP's speed comparisons.

One config::

    python tools/analysis/benchmark.py configs/asmlp/asmlp-tiny_8xb128_in1k.py
    python tools/analysis/benchmark.py CONFIG --part backbone --batch 8 --shape 512 1024
    python tools/analysis/benchmark.py CONFIG --amp --channels-last --compile --device cuda
    python tools/analysis/benchmark.py CONFIG --profile 15   # and where the time goes

runs the model (``--part model``: the classifier, detector or segmentor's ``'tensor'``
forward; ``--part backbone``: the backbone alone) on random inputs, inference and a training
step (forward, backward, SGD step), warms up, then reports the median of ``--repeats`` timed
runs; ``--profile N`` adds the N operators with the most self time in one more run of each.

The authors' throughput measure (the paper's 1047 / 619 / 455 img/s of AS-MLP-T / S / B)::

    python tools/analysis/benchmark.py configs/asmlp/asmlp-tiny_8xb128_in1k.py \
        --paper-protocol --device cuda

runs it as ``throughput()`` of svip-lab/AS-MLP's ``main.py`` does (see
:data:`PAPER_PROTOCOL`) and prints the paper's figure of the config (from the model zoo
metafiles) beside ours.

Side by side, in one process (``--compare``)::

    python tools/analysis/benchmark.py --compare                        # batch 32, 224
    python tools/analysis/benchmark.py --compare --batch 8 --repeats 3  # quicker

1. ``shift``: the axial shift alone on AS-MLP-T's stage-1 and stage-3 shapes, forward and
   forward+backward: ours (NCHW, and channels-last as the model runs it) vs ``x.clone()``
   (the floor of any data movement) vs the published pad/chunk/roll/cat/narrow method, and
   ours on its PyTorch path (``slices``: without the CPU or Triton kernel);
2. ``models``: AS-MLP-T classifier inference and training step: ours vs the same weights in
   the published model (:class:`PublishedASMLP`) vs mmpretrain's Swin-T;
3. ``variants``: the same under channels-last memory and bf16/fp16 autocast;
4. ``compile`` (opt in, slow to compile): the same with ``torch.compile``.

Timed runs of the models are interleaved (run 1 of every model, then run 2, ...) so that
load from other processes hits them alike; the shift ops are timed in blocks of calls, in
turn, three rounds (see :func:`time_blocks`). Ratios from one run are what to compare.
Drop path is off in every model of ``--compare`` (the published model has none), so all
three do the same computation.

Peak memory is what a step allocates on top of what is already allocated: on CUDA from
``torch.cuda.max_memory_allocated``; on CPU the peak of the running sum of the tensor
allocations and frees that ``torch.profiler`` records (``profile_memory=True``), which
counts every tensor PyTorch allocates (not the library-internal scratch of oneDNN).
"""
import argparse
import contextlib
import json
import os
import os.path as osp
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import DictAction
from mmengine.model import revert_sync_batchnorm

from asmlp_mm.analysis import TensorForward, build_model_from_config, data_samples, paper
from asmlp_mm.engine.cli import load_config, output_file_problem
from asmlp_mm.fast import memory
from asmlp_mm.models.published import PublishedASMLP, roll_shift
from asmlp_mm.models.weights import published_key_to_ours
from asmlp_mm.ops import axial_shift, cpu_kernel, triton_kernel
from asmlp_mm.ops.torch_compat import event_start_ns, grad_scaler
from asmlp_mm.runtime import autocast_inside, cpu_autocast_modules

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY_CONFIG = osp.join(ROOT, 'configs/asmlp/asmlp-tiny_8xb128_in1k.py')
# (channels, size) of AS-MLP-T's stage 1 and stage 3 at 224x224
SHIFT_SHAPES = {'stage1': (96, 56), 'stage3': (384, 14)}
SECTIONS = ('shift', 'models', 'variants', 'compile')
#: The authors' throughput measure (svip-lab/AS-MLP: train_scripts/get_throughput.sh and
#: throughput() in main.py): the classifier in eval mode with autograd left on (no
#: ``torch.no_grad``), one batch of 64 images at 224x224 on one GPU, 50 untimed forward
#: passes, then 30 passes timed together between two CUDA synchronizations, under apex amp
#: O1 (main.py's default ``--amp-opt-level``: fp16 autocast), with ``cudnn.benchmark`` on.
PAPER_PROTOCOL = dict(batch=64, shape=(224, 224), warmup=50, repeats=30)
#: one-config defaults without the protocol
DEFAULTS = dict(batch=32, warmup=2, repeats=5)


# ---------------------------------------------------------------- timing and memory

def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_interleaved(fns: Dict[str, Callable[[], object]], warmup: int, repeats: int,
                     device: torch.device) -> Dict[str, List[float]]:
    """Seconds per call of every function: ``warmup`` untimed rounds, then ``repeats``
    timed rounds, each round calling every function once in turn."""
    if repeats < 1:
        raise ValueError(f'repeats must be >= 1, got {repeats}')
    times = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def time_blocks(fns: Dict[str, Callable[[], object]], warmup: int, repeats: int,
                device: torch.device, rounds: int = 3) -> Dict[str, List[float]]:
    """Seconds per call of every function, in blocks: each round calls every function
    ``warmup`` times untimed, then ``repeats`` times timed, one function after the other.

    For single ops, whose time depends on the allocator state that the previous call
    left: interleaving an op with one that allocates and frees much more (pad/roll/cat)
    makes it pay page faults for memory that the other released, which in a model, where
    the same sizes recur, it does not."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(warmup):
                fn()
            times[name] += time_interleaved({name: fn}, 0, repeats, device)[name]
    return times


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes ``fn()`` allocates at its peak above what was allocated before it."""
    if device.type == 'cuda':
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == '[memory]' and str(e.device_type()).endswith('CPU')]
    events.sort(key=event_start_ns)
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def op_profile(fn: Callable[[], object], device: torch.device, rows: int) -> List[dict]:
    """The ``rows`` operators that take the most time in one ``fn()`` (self time: not
    counting the operators they call), with their share of the total."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == 'cuda':
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        synchronize(device)
    attr = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    ops = sorted(prof.key_averages(), key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in ops) or 1
    return [dict(op=e.key, calls=e.count, self_ms=getattr(e, attr) / 1e3,
                 share=getattr(e, attr) / total) for e in ops[:rows]]


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CPU, fp16 on CUDA; a no-op context without ``amp``."""
    if not amp:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if device.type == 'cpu' else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def paper_protocol_throughput(model: nn.Module, inputs: torch.Tensor, warmup: int,
                              repeats: int, device: torch.device,
                              context: Callable = contextlib.nullcontext) -> float:
    """Images/s as :data:`PAPER_PROTOCOL` measures them: ``warmup`` forward passes, then
    ``repeats`` passes timed together, in eval mode with autograd on, inside ``context()``
    (autocast)."""
    model.eval()
    with context():
        for _ in range(warmup):
            model(inputs)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            model(inputs)
        synchronize(device)
        elapsed = time.perf_counter() - start
    return repeats * inputs.shape[0] / elapsed


def loss_of(out, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for (N, classes) logits (labels taken modulo the number of classes),
    else the sum of the means of all outputs."""
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == labels.shape[0]:
        return F.cross_entropy(out.float(), labels.remainder(out.shape[1]))
    if isinstance(out, torch.Tensor):
        return out.float().mean()
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return sum(loss_of(o, labels) for o in out)
    raise TypeError(f'cannot make a loss of a model output of type {type(out).__name__}')


class Runner:
    """Inference and training-step closures of one model on one input batch.

    Args:
        model (nn.Module): Maps an image batch to logits, features or any nest of tensors.
        inputs (Tensor): The input batch.
        amp (bool): Run under autocast (bf16 on CPU, fp16 with a grad scaler on CUDA).
        cpu_autocast_only (tuple, optional): ``(module, names)``: with ``amp`` on CPU,
            autocast only those submodules of ``module`` (see
            :func:`asmlp_mm.runtime.autocast_inside`), as ``tools/train.py --amp`` does
            for detectors (mmcv's CPU ``nms`` and ``RoIAlign`` take float32 only).
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, amp: bool = False,
                 cpu_autocast_only: Optional[tuple] = None):
        self.model = model
        self.inputs = inputs
        self.amp = amp
        self.device = inputs.device
        self.cpu_autocast_only = cpu_autocast_only
        generator = torch.Generator().manual_seed(0)
        # taken modulo the model's number of outputs by loss_of
        self.labels = torch.randint(0, 1000, (inputs.shape[0], ),
                                    generator=generator).to(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=1e-6, momentum=0.9) if params else None
        use_scaler = amp and self.device.type == 'cuda'
        self.scaler = grad_scaler('cuda') if use_scaler else None

    def autocast(self):
        if self.amp and self.device.type == 'cpu' and self.cpu_autocast_only:
            root, names = self.cpu_autocast_only
            return autocast_inside(root, names, 'cpu', torch.bfloat16)
        return autocast(self.device, self.amp)

    def infer(self):
        self.model.eval()
        with torch.no_grad(), self.autocast():
            return self.model(self.inputs)

    def train_step(self):
        self.model.train()
        if self.optimizer is None:
            raise ValueError('the model has no trainable parameters')
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = loss_of(self.model(self.inputs), self.labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss


def prepare(model: nn.Module, device: torch.device, channels_last: bool = False,
            compile_: bool = False) -> nn.Module:
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_:
        model = torch.compile(model)
    return model


def make_inputs(batch: int, shape: Sequence[int], device: torch.device,
                channels_last: bool = False, seed: int = 0) -> torch.Tensor:
    if batch < 1:
        raise ValueError(f'--batch must be >= 1, got {batch}')
    if len(shape) not in (1, 2) or min(shape) < 1:
        raise ValueError(f'--shape takes H W or one size, all positive, got {list(shape)}')
    height, width = shape[0], shape[-1]
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, height, width, generator=generator).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


# ---------------------------------------------------------------- models

def build_from_config(config: str, part: str, batch: int, shape: Sequence[int],
                      cfg_options: Optional[dict] = None) -> nn.Module:
    """The backbone, or the whole model behind a plain ``forward(images)``."""
    cfg = load_config(config, cfg_options)
    model = revert_sync_batchnorm(build_model_from_config(cfg))
    if part == 'backbone':
        if not hasattr(model, 'backbone'):
            raise ValueError(f'the model of {config} has no backbone')
        return model.backbone
    if getattr(model, 'auxiliary_head', None) is not None:
        model.auxiliary_head = None  # only trains; not part of a forward
    scope = cfg.get('default_scope', 'mmpretrain')
    wrapped = TensorForward(model, data_samples(scope, batch, shape[0], shape[-1]))
    only = cpu_autocast_modules(cfg)  # as tools/train.py --amp (enable_amp)
    if only is not None:
        wrapped.cpu_autocast_only = [f'model.{name}' for name in only]
    return wrapped


def build_ours() -> nn.Module:
    """AS-MLP-T classifier of ``configs/asmlp``, returning logits; drop path off, as in
    the published model, which has none."""
    cfg = load_config(TINY_CONFIG)
    cfg.model.backbone.drop_path_rate = 0.
    cfg.model.pop('train_cfg', None)  # mixup/cutmix act in the data preprocessor only
    return TensorForward(build_model_from_config(cfg))


def build_published_like(ours: TensorForward) -> nn.Module:
    """The published AS-MLP-T classifier holding the weights of ``ours``."""
    published = PublishedASMLP(96, (2, 2, 6, 2), num_classes=1000)
    source = ours.model.state_dict()
    state = {}
    for key in published.state_dict():
        mapped = published_key_to_ours(key)
        state[key] = source['backbone.' + mapped] if mapped else source['head.fc.' + key[5:]]
    published.load_state_dict(state)
    return published


def build_swin() -> nn.Module:
    """mmpretrain's Swin-T classifier, returning logits; drop path off, as in ours."""
    import mmpretrain.models  # noqa: F401  (registers the models)
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    cfg = dict(type='ImageClassifier',
               backbone=dict(type='SwinTransformer', arch='tiny', img_size=224,
                             drop_path_rate=0.),
               neck=dict(type='GlobalAveragePooling'),
               head=dict(type='LinearClsHead', num_classes=1000, in_channels=768))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return TensorForward(MODELS.build(cfg))


def compare_models() -> Dict[str, nn.Module]:
    ours = build_ours()
    return {'AS-MLP-T (ours)': ours, 'AS-MLP-T (published way)': build_published_like(ours),
            'Swin-T (mmpretrain)': build_swin()}


# ---------------------------------------------------------------- reporting

def median_ms(seconds: List[float]) -> float:
    return statistics.median(seconds) * 1e3


def print_table(title: str, header: Sequence[str], rows: List[Sequence]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = '  '.join('-' * w for w in widths)
    print(f'\n{title}\n{line}')
    for i, row in enumerate(cells):
        print('  '.join(c.ljust(w) if j == 0 else c.rjust(w)
                        for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print(line)


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or 'unknown'
    with contextlib.suppress(OSError):
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    info = dict(torch=torch.__version__, cpu=cpu, nproc=os.cpu_count(),
                threads=torch.get_num_threads(), device=str(device))
    if device.type == 'cpu':
        info['shift_kernel'] = cpu_kernel.enabled()
        info['shift_huge_pages'] = cpu_kernel.huge_pages()
    info.update(memory.allocator_settings())
    if memory.applied():
        info['keep_freed_memory'] = True
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
        info['shift_kernel'] = triton_kernel.enabled()
        if triton_kernel.triton is not None:
            info['triton'] = triton_kernel.triton.__version__
    return info


@contextlib.contextmanager
def no_shift_kernels():
    """The axial shift on its PyTorch path (slice copies), CPU and Triton kernels off."""
    with cpu_kernel.use_cpu_kernel(False), triton_kernel.use_triton_kernel(False):
        yield


def _without_kernels(fn: Callable) -> Callable:
    def call():
        with no_shift_kernels():
            return fn()
    return call


# ---------------------------------------------------------------- --compare sections

def compare_shift(batch: int, repeats: int, device: torch.device) -> List[dict]:
    """The shift op alone: ours vs clone vs pad/roll/cat/narrow, per stage and axis; and
    ours without its kernel (``slices``: the PyTorch path)."""
    results = []
    rows = []
    for stage, (channels, size) in SHIFT_SHAPES.items():
        x = torch.randn(batch, channels, size, size, device=device)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        for dim, axis in ((3, 'W'), (2, 'H')):
            ops = {
                'clone': (x, lambda t: t.clone()),
                'ours': (x, lambda t: axial_shift(t, dim, 5)),
                'ours-CL': (x_cl, lambda t: axial_shift(t, dim, 5)),
                'slices': (x, lambda t: axial_shift(t, dim, 5)),  # run without kernels
                'roll': (x, lambda t: roll_shift(t, dim, 5)),
            }
            for mode in ('fwd', 'fwd+bwd'):
                fns = {name: _shift_call(op, t, mode) for name, (t, op) in ops.items()}
                fns['slices'] = _without_kernels(fns['slices'])
                times = time_blocks(fns, 2, repeats, device)
                ms = {name: median_ms(t) for name, t in times.items()}
                results.append(dict(stage=stage, axis=axis, mode=mode, ms=ms))
                rows.append([f'{stage} {axis} {mode}', f'{ms["clone"]:.2f}',
                             f'{ms["ours"]:.2f}', f'{ms["ours-CL"]:.2f}',
                             f'{ms["slices"]:.2f}', f'{ms["roll"]:.2f}',
                             f'{ms["ours"] / ms["clone"]:.2f}x',
                             f'{ms["roll"] / ms["ours"]:.2f}x',
                             f'{ms["slices"] / ms["ours"]:.2f}x'])
    print_table(f'Axial shift alone, batch {batch}, fp32 (median ms; stage 1: 96x56x56, '
                f'stage 3: 384x14x14; slices: ours without its kernel)',
                ['case', 'clone', 'ours', 'ours-CL', 'slices', 'pad/roll/cat', 'ours/clone',
                 'roll/ours', 'slices/ours'], rows)
    return results


def _shift_call(op, x, mode):
    if mode == 'fwd':
        return lambda: op(x)
    leaf = x.detach().requires_grad_()
    grad = torch.randn_like(x)

    def fwd_bwd():
        op(leaf).backward(grad)
        leaf.grad = None
    return fwd_bwd


def compare_model_set(models: Dict[str, nn.Module], batch: int, repeats: int,
                      device: torch.device, title: str, channels_last=False, amp=False,
                      compile_=False) -> List[dict]:
    """Inference and training-step throughput and training peak memory, side by side."""
    x = make_inputs(batch, (224, ), device, channels_last)
    runners = {name: Runner(prepare(m, device, channels_last, compile_), x, amp)
               for name, m in models.items()}
    infer = time_interleaved({n: r.infer for n, r in runners.items()}, 1, repeats, device)
    train = time_interleaved({n: r.train_step for n, r in runners.items()}, 1, repeats,
                             device)
    memory = {n: peak_memory(r.train_step, device) for n, r in runners.items()}
    names = list(models)
    ours, published, swin = names[0], names[1], names[2]
    results, rows = [], []
    for name in names:
        inf = batch / statistics.median(infer[name])
        trn = batch / statistics.median(train[name])
        results.append(dict(model=name, infer_img_s=inf, train_img_s=trn,
                            train_peak_mb=memory[name] / 2**20))
    by_name = {r['model']: r for r in results}
    for r in results:
        rows.append([r['model'], f'{r["infer_img_s"]:.1f}', f'{r["train_img_s"]:.1f}',
                     f'{r["train_peak_mb"]:.0f}'])
    for other in (published, swin):
        a, b = by_name[ours], by_name[other]
        rows.append([f'ratio ours / {other}', f'{a["infer_img_s"] / b["infer_img_s"]:.2f}x',
                     f'{a["train_img_s"] / b["train_img_s"]:.2f}x',
                     f'{a["train_peak_mb"] / b["train_peak_mb"]:.2f}x'])
    print_table(title, ['model', 'infer img/s', 'train img/s', 'train peak MB'], rows)
    return results


def check_same_outputs(models: Dict[str, nn.Module], device: torch.device) -> float:
    """Largest difference between our logits and the published model's (same weights)."""
    names = list(models)
    x = make_inputs(2, (224, ), device, seed=1)
    with torch.no_grad():
        a = models[names[0]].to(device).eval()(x)
        b = models[names[1]].to(device).eval()(x)
    diff = (a - b).abs().max().item()
    print(f'max |ours - published| on the same weights: {diff:.2e} '
          f'(logits up to {b.abs().max().item():.2f})')
    return diff


def run_compare(args) -> dict:
    device = torch.device(args.device)
    report = dict(machine=machine_info(device), batch=args.batch, repeats=args.repeats)
    print(json.dumps(report['machine']))
    if 'shift' in args.sections:
        report['shift'] = compare_shift(args.batch, args.repeats, device)
    if not set(args.sections) & {'models', 'variants', 'compile'}:
        return report
    torch.manual_seed(0)
    models = compare_models()
    report['max_abs_diff'] = check_same_outputs(models, device)
    amp_name = 'bf16' if device.type == 'cpu' else 'fp16'
    settings = []
    if 'models' in args.sections:
        settings.append(('models', 'fp32', dict()))
    if 'variants' in args.sections:
        settings += [('variants', 'fp32 channels-last', dict(channels_last=True)),
                     ('variants', f'{amp_name} autocast', dict(amp=True)),
                     ('variants', f'{amp_name} autocast channels-last',
                      dict(amp=True, channels_last=True))]
    if 'compile' in args.sections:
        settings.append(('compile', 'fp32 torch.compile', dict(compile_=True)))
    for section, label, kwargs in settings:
        title = f'AS-MLP-T vs published way vs Swin-T, {label}, batch {args.batch}, 224x224'
        report.setdefault(section, {})[label] = compare_model_set(
            models, args.batch, args.repeats, device, title, **kwargs)
        for m in models.values():
            m.to(memory_format=torch.contiguous_format)
    return report


# ---------------------------------------------------------------- one config

def run_config(args) -> dict:
    device = torch.device(args.device)
    shape = args.shape
    model = build_from_config(args.config, args.part, args.batch, shape, args.cfg_options)
    only = getattr(model, 'cpu_autocast_only', None)
    only = (model, only) if only else None  # the module itself: compiling wraps it
    model = prepare(model, device, args.channels_last, args.compile)
    x = make_inputs(args.batch, shape, device, args.channels_last)
    runner = Runner(model, x, args.amp, cpu_autocast_only=only)
    result = dict(machine=machine_info(device), config=args.config, part=args.part,
                  batch=args.batch, shape=[shape[0], shape[-1]], amp=args.amp,
                  channels_last=args.channels_last, compile=args.compile)
    modes = ['infer', 'train'] if args.mode == 'both' else [args.mode]
    rows = []
    for mode in modes:
        fn = runner.infer if mode == 'infer' else runner.train_step
        try:
            times = time_interleaved({mode: fn}, args.warmup, args.repeats, device)[mode]
        except ValueError as err:
            if 'more than 1 value per channel' not in str(err):
                raise
            raise SystemExit(f'--batch {args.batch}: a BatchNorm layer of this model sees a '
                             'single value per channel in training (a pooled feature); '
                             'give --batch 2 or more, or --mode infer') from err
        peak = peak_memory(fn, device)
        result[mode] = dict(img_s=args.batch / statistics.median(times),
                            median_ms=median_ms(times), peak_mb=peak / 2**20,
                            runs_ms=[t * 1e3 for t in times])
        rows.append([mode, f'{result[mode]["img_s"]:.1f}', f'{result[mode]["median_ms"]:.1f}',
                     f'{result[mode]["peak_mb"]:.1f}'])
        if args.profile:
            result[mode]['profile'] = op_profile(fn, device, args.profile)
    print(json.dumps(result['machine']))
    print_table(f'{args.config} ({args.part}), batch {args.batch}, {shape[0]}x{shape[-1]}, '
                f'amp={args.amp}, channels_last={args.channels_last}, '
                f'compile={args.compile}', ['mode', 'img/s', 'median ms', 'peak MB'], rows)
    for mode in modes if args.profile else []:
        print_table(f'{mode}: operators by self time (one run, under torch.profiler)',
                    ['operator', 'calls', 'self ms', 'share'],
                    [[p['op'], p['calls'], f'{p["self_ms"]:.1f}', f'{p["share"]:.1%}']
                     for p in result[mode]['profile']])
    return result


def protocol_deviations(args) -> List[str]:
    """What a ``--paper-protocol`` run does differently from :data:`PAPER_PROTOCOL`."""
    shape = (args.shape[0], args.shape[-1])
    given = dict(batch=args.batch, shape=shape, warmup=args.warmup, repeats=args.repeats)
    out = [f'{name} {value if name != "shape" else "x".join(map(str, value))}'
           for name, value in given.items() if value != PAPER_PROTOCOL[name]]
    device = torch.device(args.device)
    if device.type != 'cuda':
        out.append(f'{device.type} ({"bf16 autocast" if args.amp else "fp32"}, not fp16 '
                   'on a GPU)')
    out += [flag for flag, on in (('channels-last', args.channels_last),
                                  ('torch.compile', args.compile),
                                  ('--cfg-options', args.cfg_options)) if on]
    return out


def run_paper_protocol(args) -> dict:
    """Throughput of one config as the authors measured theirs, beside the paper's."""
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # as main.py sets it
    shape = (args.shape[0], args.shape[-1])
    model = build_from_config(args.config, 'model', args.batch, shape, args.cfg_options)
    only = getattr(model, 'cpu_autocast_only', None)
    only = (model, only) if only else None
    model = prepare(model, device, args.channels_last, args.compile)
    x = make_inputs(args.batch, shape, device, args.channels_last)
    # fp16 autocast on CUDA always (apex O1); on CPU fp32 unless --amp (bf16)
    amp = device.type == 'cuda' or args.amp
    precision = ('fp16 autocast' if device.type == 'cuda' else
                 'bf16 autocast' if amp else 'fp32')
    runner = Runner(model, x, amp, cpu_autocast_only=only)  # for its autocast only
    img_s = paper_protocol_throughput(model, x, args.warmup, args.repeats, device,
                                      runner.autocast)
    entry = paper.find_model(args.config)
    paper_img_s = entry.throughput if entry is not None else None
    deviations = protocol_deviations(args)
    result = dict(machine=machine_info(device), config=args.config, protocol='paper',
                  batch=args.batch, shape=list(shape), warmup=args.warmup,
                  repeats=args.repeats, precision=precision, autograd=True,
                  channels_last=args.channels_last, compile=args.compile, img_s=img_s,
                  paper_img_s=paper_img_s, deviations=deviations)
    print(json.dumps(result['machine']))
    print(f'\nThe paper\'s protocol (svip-lab/AS-MLP main.py throughput()): batch '
          f'{args.batch}, {shape[0]}x{shape[1]}, {args.warmup} warm-up + {args.repeats} timed '
          f'forward passes, eval mode with autograd on, {precision} on {device}')
    print(f'{args.config}: {img_s:.1f} img/s')
    if paper_img_s is None:
        print('the model zoo has no paper throughput for this config')
    else:
        here = result['machine'].get('gpu', result['machine']['cpu'])
        print(f'paper: {paper_img_s:g} img/s (on the authors\' GPU; ours on {here})')
    if deviations:
        print(f'not the paper\'s protocol: {", ".join(deviations)}')
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', nargs='?', help='config file (not needed with --compare)')
    parser.add_argument('--compare', action='store_true',
                        help='AS-MLP-T vs the published way vs Swin-T, side by side')
    parser.add_argument('--paper-protocol', action='store_true',
                        help="the authors' throughput measure (svip-lab/AS-MLP main.py): "
                        'inference only, batch 64, 224x224, 50 warm-up and 30 timed '
                        'forward passes in eval mode with autograd on, fp16 autocast on '
                        'CUDA (on CPU fp32, or bf16 with --amp); prints the paper\'s '
                        'figure of the config beside ours')
    parser.add_argument('--sections', nargs='+', choices=SECTIONS,
                        default=['shift', 'models', 'variants'],
                        help='parts of --compare to run (compile is opt in)')
    parser.add_argument('--part', choices=['model', 'backbone'], default='model')
    parser.add_argument('--mode', choices=['infer', 'train', 'both'], default='both')
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--batch', type=int,
                        help='default: 32, or 64 with --paper-protocol')
    parser.add_argument('--shape', type=int, nargs='+', default=[224], metavar=('H', 'W'),
                        help='input size: H W, or one value for a square')
    parser.add_argument('--warmup', type=int,
                        help='untimed runs; default: 2, or 50 with --paper-protocol')
    parser.add_argument('--repeats', type=int,
                        help='timed runs; default: 5, or 30 with --paper-protocol')
    parser.add_argument('--amp', action='store_true',
                        help='autocast: bf16 on CPU, fp16 (with a grad scaler) on CUDA')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--compile', action='store_true', help='torch.compile the model')
    parser.add_argument('--profile', type=int, default=0, metavar='N',
                        help='also list the N operators that take the most time (one '
                        'config only)')
    parser.add_argument('--threads', type=int, help='torch.set_num_threads')
    parser.add_argument('--keep-memory', action='store_true',
                        help='let glibc keep the memory the process frees, as tools/train.py '
                        'and test.py do on CPU (asmlp_mm.fast.keep_freed_memory)')
    parser.add_argument('--out', help='also write the results to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries')
    args = parser.parse_args(argv)
    if not args.compare and not args.config:
        parser.error('give a config, or --compare')
    if args.profile < 0:
        parser.error(f'--profile takes a number of operators >= 0, got {args.profile}')
    if args.profile and args.compare:
        parser.error('--profile profiles one config; it does not combine with --compare')
    if args.paper_protocol:
        measured = [flag for flag, other in (
            ('--compare', args.compare), ('--part', args.part != 'model'),
            ('--mode', args.mode != parser.get_default('mode')), ('--profile', args.profile))
            if other]
        if measured:
            parser.error(f'--paper-protocol measures the inference of the whole model of one '
                         f'config; it does not take {", ".join(measured)}')
    one_config = ('mode', 'part', 'shape', 'warmup', 'amp', 'channels_last', 'compile',
                  'cfg_options')
    given = [f'--{name.replace("_", "-")}' for name in one_config
             if getattr(args, name) != parser.get_default(name)]
    if args.compare and given:
        parser.error(f'{", ".join(given)}: options of a one-config run, which --compare '
                     f'does not take (it runs inference and training at 224x224; its '
                     f'sections "variants" and "compile" run --amp, --channels-last and '
                     f'--compile)')
    if not args.compare and args.sections != parser.get_default('sections'):
        parser.error('--sections chooses parts of --compare')
    if len(args.shape) not in (1, 2) or min(args.shape) < 1:
        parser.error(f'--shape takes H W or one size, all positive, got {args.shape}')
    for name, least in (('batch', 1), ('warmup', 0), ('repeats', 1), ('threads', 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            parser.error(f'--{name} must be >= {least}, got {value}')
    defaults = PAPER_PROTOCOL if args.paper_protocol else DEFAULTS
    for name in DEFAULTS:
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ('cpu', 'cuda'):
        parser.error(f"--device takes 'cpu', 'cuda' or 'cuda:N', got {args.device!r}")
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: CUDA is not available here')
    if args.config and not osp.isfile(args.config):
        parser.error(f'config {args.config!r} does not exist')
    problem = args.out is not None and output_file_problem(args.out, ['.json'])
    if problem:
        parser.error(f'--out {problem}')
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_memory:
        memory.keep_freed_memory()
    if args.out:  # its folder now, not after the run
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    if args.compare:
        result = run_compare(args)
    elif args.paper_protocol:
        result = run_paper_protocol(args)
    else:
        result = run_config(args)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    main()
