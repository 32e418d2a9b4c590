"""tools/analysis/benchmark.py runs and reports; no timing is asserted."""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
from helpers import load_tool

from asmlp_mm.fast import memory

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
benchmark = load_tool('analysis/benchmark.py')

CLS_DEMO = osp.join(ROOT, 'configs', 'demo', 'asmlp-demo_1xb8_shapes-cls.py')
CLS_TINY = osp.join(ROOT, 'configs', 'asmlp', 'asmlp-tiny_8xb128_in1k.py')


def recorder(calls, name):
    return lambda: calls.append(name)


def test_interleaved_and_block_timing_call_orders():
    calls = []
    fns = {'a': recorder(calls, 'a'), 'b': recorder(calls, 'b')}
    times = benchmark.time_interleaved(fns, 1, 2, benchmark.torch.device('cpu'))
    assert calls == ['a', 'b'] * 3
    assert {k: len(v) for k, v in times.items()} == {'a': 2, 'b': 2}
    calls.clear()
    times = benchmark.time_blocks(fns, 1, 2, benchmark.torch.device('cpu'), rounds=2)
    assert calls == (['a'] * 3 + ['b'] * 3) * 2
    assert {k: len(v) for k, v in times.items()} == {'a': 4, 'b': 4}
    assert all(t >= 0 for v in times.values() for t in v)
    with pytest.raises(ValueError, match='repeats'):
        benchmark.time_interleaved(fns, 0, 0, benchmark.torch.device('cpu'))


def test_machine_line_names_the_allocator_settings(monkeypatch):
    """Settings that change what fresh memory costs travel with the figures."""
    environ = {'GLIBC_TUNABLES': 'glibc.malloc.trim_threshold=1', 'MALLOC_CONF': 'thp:always',
               'MALLOC_MMAP_THRESHOLD_': '4294967296', 'TCMALLOC_RELEASE_RATE': '0',
               'THP_MEM_ALLOC_ENABLE': '1', 'LD_PRELOAD': '', 'LD_LIBRARY_PATH': '/x',
               'MALLOCX': 'no', 'THP_MEM_ALLOC_ENABLED': 'no', 'HOME': '/root'}
    assert list(memory.allocator_settings(environ)) == [
        'GLIBC_TUNABLES', 'MALLOC_CONF', 'MALLOC_MMAP_THRESHOLD_', 'TCMALLOC_RELEASE_RATE',
        'THP_MEM_ALLOC_ENABLE']
    for name in ('LD_PRELOAD', 'GLIBC_TUNABLES', 'MALLOC_TRIM_THRESHOLD_'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('MALLOC_TRIM_THRESHOLD_', '68719476736')
    info = benchmark.machine_info(benchmark.torch.device('cpu'))
    assert info['MALLOC_TRIM_THRESHOLD_'] == '68719476736' and 'GLIBC_TUNABLES' not in info


def test_one_config_reports_throughput_and_memory(capsys):
    result = benchmark.main([CLS_DEMO, '--batch', '2', '--shape', '40', '48', '--warmup',
                             '0', '--repeats', '1'])
    assert result['shape'] == [40, 48] and result['batch'] == 2
    for mode in ('infer', 'train'):
        assert result[mode]['img_s'] > 0 and len(result[mode]['runs_ms']) == 1
        assert result[mode]['peak_mb'] > 0
    assert 'img/s' in capsys.readouterr().out


def test_profile_lists_the_operators_that_take_the_time(capsys):
    result = benchmark.main([CLS_DEMO, '--part', 'backbone', '--mode', 'infer', '--batch',
                             '2', '--shape', '32', '--warmup', '0', '--repeats', '1',
                             '--profile', '4'])
    ops = result['infer']['profile']
    assert len(ops) == 4 and 'train' not in result
    shares = [op['share'] for op in ops]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1
    assert all(op['calls'] >= 1 and op['self_ms'] >= 0 for op in ops)
    out = capsys.readouterr().out
    assert 'operators by self time' in out and ops[0]['op'] in out
    for wrong in ([CLS_DEMO, '--profile', '-1'], ['--compare', '--profile', '3']):
        with pytest.raises(SystemExit):
            benchmark.parse_args(wrong)
        assert '--profile' in capsys.readouterr().err


@pytest.mark.parametrize('wrong,named', [
    (['--compare', '--mode', 'infer'], '--mode: options of a one-config run'),
    (['--compare', '--amp', '--shape', '64'], '--shape, --amp: options of a one-config run'),
    ([CLS_DEMO, '--sections', 'shift'], '--sections chooses parts of --compare')])
def test_options_the_chosen_run_ignores_are_refused(capsys, wrong, named):
    """--compare ran inference and training at 224 whatever --mode or --shape said."""
    with pytest.raises(SystemExit):
        benchmark.parse_args(wrong)
    assert named in capsys.readouterr().err


@pytest.mark.parametrize('wrong,named', [
    (['--batch', '0'], '--batch must be >= 1, got 0'),
    (['--shape', '0'], '--shape takes H W or one size, all positive'),
    (['--warmup', '-1'], '--warmup must be >= 0'),
    (['--repeats', '0'], '--repeats must be >= 1'),
    (['--threads', '-3'], '--threads must be >= 1'),
    (['--device', 'foo'], "--device takes 'cpu', 'cuda' or 'cuda:N', got 'foo'"),
    (['--out', '{tmp}'], 'is a folder'),
    (['--out', '{tmp}/new/sub/x.txt'], 'suffixes .json'),
    (['--out', '{tmp}/file/x.json'], 'is not a writable folder'),
])
def test_bad_values_are_refused_before_any_work(tmp_path, capsys, wrong, named):
    """They were tracebacks, some after the whole run (--out a folder: the results lost),
    some after making --out's folders."""
    (tmp_path / 'file').write_text('')
    with pytest.raises(SystemExit):
        benchmark.parse_args([CLS_DEMO] + [w.replace('{tmp}', str(tmp_path)) for w in wrong])
    assert named in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.parse_args([str(tmp_path / 'missing.py')])
    assert re.search(r"config '.*missing.py' does not exist", capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['file']


def test_training_a_pooled_batch_norm_on_one_image_names_the_batch():
    pytest.importorskip('mmseg')  # installed by make install; not with mmcv-lite
    seg_demo = osp.join(ROOT, 'configs', 'demo', 'upernet_asmlp-demo_shapes-ade.py')
    with pytest.raises(SystemExit, match='--batch 1: a BatchNorm layer'):
        benchmark.main([seg_demo, '--mode', 'train', '--batch', '1', '--shape', '64',
                        '--warmup', '0', '--repeats', '1'])


def test_amp_on_cpu_runs_a_detector_with_its_backbone_and_neck_in_bfloat16(capsys):
    """As tools/train.py --amp: mmcv's CPU nms and RoIAlign take float32 only."""
    import torch
    pytest.importorskip('mmdet')  # installed by make install; not with mmcv-lite
    det_demo = osp.join(ROOT, 'configs', 'demo', 'cascade-mask-rcnn_asmlp-demo_fpn_shapes-coco.py')
    model = benchmark.build_from_config(det_demo, 'model', 1, (64, 64))
    assert model.cpu_autocast_only == ['model.backbone', 'model.neck']
    seen = {}
    for name, module in (('backbone', model.model.backbone.patch_embed.proj),
                         ('rpn_head', model.model.rpn_head.rpn_conv)):
        module.register_forward_hook(
            lambda m, args, out, name=name: seen.__setitem__(name, out.dtype))
    runner = benchmark.Runner(model, torch.rand(1, 3, 64, 64) * 255, amp=True,
                              cpu_autocast_only=(model, model.cpu_autocast_only))
    runner.train_step()
    assert seen == {'backbone': torch.bfloat16, 'rpn_head': torch.float32}
    result = benchmark.main([det_demo, '--amp', '--batch', '1', '--shape', '64',
                             '--warmup', '0', '--repeats', '1'])
    assert result['amp'] and result['infer']['img_s'] > 0 and result['train']['img_s'] > 0


def test_compare_models_hold_the_same_weights(capsys):
    """The published-way model of --compare computes our logits (same weights), and the
    shift section covers both stages and axes."""
    result = benchmark.main(['--compare', '--sections', 'shift', 'models', '--batch', '1',
                             '--repeats', '1'])
    assert result['max_abs_diff'] < 1e-4
    cases = {(r['stage'], r['axis'], r['mode']) for r in result['shift']}
    assert len(cases) == 8
    names = [r['model'] for r in result['models']['fp32']]
    assert names == ['AS-MLP-T (ours)', 'AS-MLP-T (published way)', 'Swin-T (mmpretrain)']
    out = capsys.readouterr().out
    assert 'ratio ours / AS-MLP-T (published way)' in out and 'roll/ours' in out
    assert all(set(r['ms']) == {'clone', 'ours', 'ours-CL', 'slices', 'roll'}
               for r in result['shift'])
    assert 'slices/ours' in out


def test_gpu_check_script_calls_the_tools_as_they_are(tmp_path):
    """tools/gpu_check.sh (the GPU run of docs/benchmarks.md) calls tests that exist and the
    benchmark with flags it takes. Run here with DEVICE=cpu and a stand-in python that only
    records its arguments."""
    calls = tmp_path / 'calls'
    python = tmp_path / 'python'
    python.write_text(f'#!/bin/sh\nprintf "%s\\037" "$@" >> {calls}\necho >> {calls}\n')
    python.chmod(0o755)
    out = tmp_path / 'out'
    env = dict(os.environ, PYTHON=str(python), DEVICE='cpu', COMPILE='1')
    result = subprocess.run(['bash', osp.join(ROOT, 'tools', 'gpu_check.sh'), str(out)],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'all steps passed' in result.stdout
    argv = [line.split('\x1f')[:-1] for line in calls.read_text().splitlines()]
    tests = [a for a in argv if a[:2] == ['-m', 'pytest']]
    assert len(tests) == 1
    targets = [t for t in tests[0] if t.startswith('tests/')]
    assert targets and all(osp.isfile(osp.join(ROOT, t)) for t in targets)
    runs = [a[1:] for a in argv if a[0] == 'tools/analysis/benchmark.py']
    # --compare, the backbone in fp32 and AMP, the paper's throughput of T, S and B, the
    # compiled models
    assert len(runs) == 7
    for args in runs:
        parsed = benchmark.parse_args(args)
        assert parsed.device == 'cpu' and parsed.out.startswith(str(out))
        assert parsed.compare or osp.isfile(osp.join(ROOT, parsed.config))
    assert sorted(osp.basename(args[0]) for args in runs if '--paper-protocol' in args) == [
        f'asmlp-{arch}_8xb128_in1k.py' for arch in ('base', 'small', 'tiny')]
    assert len(tests) + len(runs) == len(argv)
    assert sorted(os.listdir(out)) == [
        'backbone-800x1216-amp.txt', 'backbone-800x1216-fp32.txt', 'compare.txt', 'compile.txt',
        *[f'paper-throughput-{arch}.txt' for arch in ('base', 'small', 'tiny')], 'tests.txt']


def test_keep_memory_is_applied_and_named_in_the_machine_line(tmp_path):
    """--keep-memory (in a fresh process: the setting lasts for the life of the process)."""
    env = {k: v for k, v in os.environ.items()
           if k != memory.ENV_SWITCH and k not in memory.allocator_settings()}
    out = tmp_path / 'new folder' / 'result.json'  # --out makes its folder
    for flag, named in (['--keep-memory'], True), ([], False):
        subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'analysis', 'benchmark.py'),
                        CLS_DEMO, '--mode', 'infer', '--batch', '1', '--shape', '32',
                        '--warmup', '0', '--repeats', '1', '--out', str(out), *flag],
                       env=env, check=True, capture_output=True)
        with open(out) as f:
            machine = json.load(f)['machine']
        assert machine.get('keep_freed_memory', False) is named


def test_paper_protocol_times_eval_passes_with_autograd_on():
    """As svip-lab/AS-MLP's throughput(): warm-up and timed passes in eval mode, without
    torch.no_grad, under the given autocast."""
    import torch
    seen = []

    class Probe(torch.nn.Linear):
        def forward(self, x):
            out = super().forward(x)
            seen.append((self.training, torch.is_grad_enabled(), out.dtype))
            return out

    cpu = torch.device('cpu')
    img_s = benchmark.paper_protocol_throughput(
        Probe(4, 3).train(), torch.ones(5, 4), 3, 2, cpu, lambda: benchmark.autocast(cpu, True))
    assert seen == [(False, True, torch.bfloat16)] * 5 and img_s > 0


def test_paper_protocol_defaults_and_what_it_refuses(capsys):
    protocol = benchmark.parse_args([CLS_TINY, '--paper-protocol'])
    assert (protocol.batch, protocol.shape, protocol.warmup, protocol.repeats) == (
        64, [224], 50, 30)
    assert benchmark.protocol_deviations(protocol) == ['cpu (fp32, not fp16 on a GPU)']
    plain = benchmark.parse_args([CLS_TINY])
    assert (plain.batch, plain.warmup, plain.repeats) == (32, 2, 5)
    for wrong in (['--part', 'backbone'], ['--mode', 'train'], ['--profile', '3']):
        with pytest.raises(SystemExit):
            benchmark.parse_args([CLS_TINY, '--paper-protocol', *wrong])
        assert f'it does not take {wrong[0]}' in capsys.readouterr().err


def test_paper_protocol_puts_the_papers_figure_beside_ours(monkeypatch, capsys):
    """The AS-MLP-T config's run (its model swapped for the demo's tiny one) reports the
    paper's 1047 img/s from the model zoo, and what differs from the paper's protocol."""
    build = benchmark.build_from_config
    monkeypatch.setattr(benchmark, 'build_from_config',
                        lambda config, *args: build(CLS_DEMO, *args))
    result = benchmark.main([CLS_TINY, '--paper-protocol', '--amp', '--batch', '2',
                             '--shape', '32', '--warmup', '1', '--repeats', '2'])
    assert result['img_s'] > 0 and result['paper_img_s'] == 1047
    assert result['precision'] == 'bf16 autocast' and result['autograd']
    assert result['deviations'] == ['batch 2', 'shape 32x32', 'warmup 1', 'repeats 2',
                                    'cpu (bf16 autocast, not fp16 on a GPU)']
    out = capsys.readouterr().out
    assert 'paper: 1047 img/s' in out and "not the paper's protocol: batch 2" in out
    demo = benchmark.main([CLS_DEMO, '--paper-protocol', '--batch', '1', '--shape', '32',
                           '--warmup', '0', '--repeats', '1'])
    assert demo['paper_img_s'] is None and demo['precision'] == 'fp32'
    assert 'no paper throughput for this config' in capsys.readouterr().out
