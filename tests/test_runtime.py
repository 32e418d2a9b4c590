"""The run-time fixes of :mod:`asmlp_mm.runtime` (CPU autocast, the checkpoint reader as
mmengine's loader), and that ``import asmlp_mm`` applies none of them."""
import copy
import json
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from mmengine.optim import build_optim_wrapper

from asmlp_mm.checkpoint_io import CheckpointError, foreign_objects, load_local_checkpoint
from asmlp_mm.ops.torch_compat import is_autocast_enabled
from asmlp_mm.runtime import AutocastOptimWrapper, enable_amp


#: prints mmengine's checkpoint schemes, local file backend and the warnings filters before
#: and after ``import asmlp_mm``, and after ``import asmlp_mm.runtime``
PROCESS_STATE = """
import json, warnings
from mmengine.fileio.backends import registry_utils as files
from mmengine.registry import HOOKS, OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.runner.checkpoint import CheckpointLoader

def name(obj):
    return f'{obj.__module__}.{obj.__qualname__}'

def state():
    return dict(schemes={p: name(f) for p, f in CheckpointLoader._schemes.items()},
                local=name(files.backends['local']), default=name(files.prefix_to_backends['']),
                filters=[repr(f) for f in warnings.filters],
                hooks='CheckpointFitsHook' in HOOKS.module_dict,
                amp='AmpFallbackOptimWrapperConstructor' in OPTIM_WRAPPER_CONSTRUCTORS.module_dict)

states = [state()]
import asmlp_mm
states.append(state())
import asmlp_mm.runtime
states.append(state())
print(json.dumps(states))
"""


def test_importing_the_package_registers_and_the_runtime_applies_the_fixes():
    out = subprocess.run([sys.executable, '-c', PROCESS_STATE], capture_output=True,
                         text=True, check=True).stdout
    before, imported, applied = json.loads(out.splitlines()[-1])
    assert imported == dict(before, hooks=True)  # registered, nothing else changed
    assert not before['hooks'] and not imported['amp'] and applied['amp']
    mine = 'asmlp_mm.runtime.checkpoints.'
    for prefix, loader in (('', 'load_from_local'), ('http://', 'load_from_http'),
                           ('https://', 'load_from_http')):
        assert imported['schemes'][prefix] == 'mmengine.runner.checkpoint.' + loader
        assert applied['schemes'][prefix] == mine + loader
    assert imported['local'] == imported['default'] == \
        'mmengine.fileio.backends.local_backend.LocalBackend'
    assert applied['local'] == applied['default'] == mine + 'AtomicLocalBackend'
    silenced = [f for f in applied['filters'] if 'pkg_resources is deprecated' in f]
    assert len(silenced) == 1 and silenced[0] not in imported['filters']


#: ASMLP's init_cfg loading with only ``import asmlp_mm``: a training checkpoint (with a
#: HistoryBuffer, which torch's weights-only default refuses) and a missing file
PRETRAINED_WITHOUT_RUNTIME = """
import sys, torch
from mmengine.logging import HistoryBuffer
import asmlp_mm
from asmlp_mm import ASMLP
from asmlp_mm.checkpoint_io import CheckpointNotFoundError

path, missing = sys.argv[1:]
arch = dict(embed_dims=8, depths=[1, 1, 1, 1])
source = ASMLP(arch)
torch.save({'state_dict': {'backbone.' + k: v for k, v in source.state_dict().items()},
            'message_hub': {'log': HistoryBuffer([1.0], [1])}}, path)
model = ASMLP(arch, init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
model.init_weights()
assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
try:
    ASMLP(arch, init_cfg=dict(type='Pretrained', checkpoint=missing)).init_weights()
except CheckpointNotFoundError as err:
    print('not found:', err)
assert 'asmlp_mm.runtime' not in sys.modules
"""


def test_pretrained_weights_load_without_the_runtime_module(tmp_path):
    """The backbone's own loading does not depend on asmlp_mm.runtime having routed
    mmengine's loader (a user who builds ASMLP in Python imports only asmlp_mm)."""
    result = subprocess.run(
        [sys.executable, '-c', PRETRAINED_WITHOUT_RUNTIME, str(tmp_path / 'trained.pth'),
         str(tmp_path / 'missing.pth')], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'not found:' in result.stdout and 'the pretrained weights of ASMLP (init_cfg)' \
        in result.stdout


def test_autocast_optim_wrapper_trains_in_bfloat16_on_cpu():
    model = torch.nn.Linear(4, 2)
    wrapper = AutocastOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    before = model.weight.detach().clone()
    with wrapper.optim_context(model):
        out = model(torch.randn(3, 4))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().square().mean())
    assert model.weight.dtype == torch.float32
    assert not torch.equal(before, model.weight)


def test_autocast_of_named_submodules_only():
    """modules=[...]: those submodules run under autocast and return float32; the rest of
    the model, and everything after the context, runs in float32."""
    model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()),
                                torch.nn.Linear(4, 2))
    seen = {}
    for name, module in model.named_modules():
        module.register_forward_hook(
            lambda m, args, out, name=name: seen.__setitem__(name, out.dtype))
    model[1].register_forward_pre_hook(lambda m, args: seen.__setitem__('1 in', args[0].dtype))
    wrapper = AutocastOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                   modules=['0'])
    before = [p.detach().clone() for p in model.parameters()]
    with wrapper.optim_context(model):
        out = model(torch.randn(3, 4))
    # (this test's hook on '0' sees its output before it is cast to float32)
    assert seen == {'0.0': torch.bfloat16, '0.1': torch.bfloat16, '0': torch.bfloat16,
                    '1 in': torch.float32, '1': torch.float32, '': torch.float32}
    wrapper.update_params(out.square().mean())
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    model(torch.randn(3, 4))  # the hooks are gone
    assert seen['0.0'] == torch.float32


def test_autocast_of_submodules_ends_when_their_forward_fails():
    class Failing(torch.nn.Linear):
        def forward(self, x):
            raise RuntimeError('bad input')

    model = torch.nn.Sequential(Failing(4, 4))
    wrapper = AutocastOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                   modules=['0'])
    with pytest.raises(RuntimeError, match='bad input'), wrapper.optim_context(model):
        model(torch.randn(3, 4))
    assert not is_autocast_enabled('cpu')
    with pytest.raises(ValueError, match="no submodule 'neck'"):
        with AutocastOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                  modules=['neck']).optim_context(model):
            pass


def test_enable_amp_picks_the_cpu_wrapper():
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1))))
    enable_amp(cfg)
    # the config asks for AMP; its constructor builds what this machine runs
    wrapper = build_optim_wrapper(torch.nn.Linear(4, 2), cfg.optim_wrapper)
    expected = 'AmpOptimWrapper' if torch.cuda.is_available() else 'AutocastOptimWrapper'
    assert type(wrapper).__name__ == expected


def test_enable_amp_drops_the_loss_scale_of_an_amp_config_on_cpu(monkeypatch):
    """Without CUDA an AmpOptimWrapper config becomes an AutocastOptimWrapper one, which
    takes none of AmpOptimWrapper's loss scaling arguments."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = Config(dict(optim_wrapper=dict(
        type='AmpOptimWrapper', loss_scale=512., use_fsdp=False, dtype='float16',
        optimizer=dict(type='SGD', lr=0.1), clip_grad=dict(max_norm=1.))))
    enable_amp(cfg)
    model = torch.nn.Linear(4, 2)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert type(wrapper) is AutocastOptimWrapper and wrapper.cast_dtype == torch.bfloat16
    assert wrapper.clip_grad_kwargs == dict(max_norm=1.)  # the other arguments stay
    reference = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(3, 4)
    with wrapper.optim_context(model):
        out = model(x)
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().square().mean())
    # the step by hand: bfloat16 autocast, clipped gradient, SGD
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ref_out = reference(x)
    ref_out.float().square().mean().backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm=1.)
    torch.optim.SGD(reference.parameters(), lr=0.1).step()
    for p, ref, old in zip(model.parameters(), reference.parameters(), before):
        assert not torch.equal(p, old)
        torch.testing.assert_close(p, ref)


class Reduced:
    """Pickles as the call ``fn(*args)`` (its ``__reduce__``), for hand-made pickles."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __call__(self, *args):  # pickle wants the function of a reduction callable
        raise AssertionError('not called: only pickled')

    def __reduce__(self):
        return self.fn, self.args


def test_checkpoint_loader_refuses_getattr_beyond_history_buffer_statistics(tmp_path):
    """getattr is allowed for what mmengine checkpoints fetch with it (HistoryBuffer's
    statistics methods), not to walk from HistoryBuffer to ``eval``."""
    marker = tmp_path / 'PWNED'
    init_globals = Reduced(getattr, Reduced(getattr, HistoryBuffer, '__init__'), '__globals__')
    builtins = Reduced(Reduced(getattr, init_globals, 'get'), '__builtins__')
    evaluate = Reduced(Reduced(getattr, builtins, 'get'), 'eval')
    path = tmp_path / 'exploit.pth'
    torch.save({'meta': Reduced(evaluate, f'open({str(marker)!r}, "w")')}, path)
    with pytest.raises(CheckpointError, match='refusing'):
        load_local_checkpoint(str(path))
    assert not marker.exists()
    # what mmengine pickles does load
    path = tmp_path / 'stats.pth'
    torch.save({'min': Reduced(getattr, HistoryBuffer, 'min')}, path)
    assert load_local_checkpoint(str(path)) == {'min': HistoryBuffer.min}


def test_weights_only_refusal_is_the_sentence_that_names_what_was_refused(tmp_path):
    import argparse
    from asmlp_mm.checkpoint_io import weights_only_refusal
    torch.save({'config': argparse.Namespace(a=1)}, tmp_path / 'ns.pth')
    (tmp_path / 'junk.pth').write_text('not a checkpoint')
    reasons = []
    for name in ('ns.pth', 'junk.pth'):
        with pytest.raises(Exception) as err:
            torch.load(tmp_path / name, weights_only=True)
        reasons.append(weights_only_refusal(err.value))
    # torch's wording since add_safe_globals (2.4); torch 2.1 has its own
    refused = ('Unsupported global: GLOBAL argparse.Namespace was not an allowed global by '
               'default.' if hasattr(torch.serialization, 'add_safe_globals') else
               'Unsupported class argparse.Namespace')
    assert reasons == [refused, 'Unsupported operand 110']
    assert weights_only_refusal(ValueError('first\nsecond')) == 'first'


def test_checkpoint_of_a_runner_loads_with_its_training_state(tmp_path):
    """A checkpoint saved by mmengine's Runner (message hub with HistoryBuffers and numpy
    scalars, optimizer, parameter schedulers) loads whole: no object of it is left out
    (a ForeignObject), as resuming needs them all."""
    import numpy as np
    from mmengine.evaluator import BaseMetric
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Toy(BaseModel):

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            out = self.linear(torch.stack(inputs))
            return dict(loss=out.square().mean()) if mode == 'loss' else list(out)

    class Metric(BaseMetric):

        def process(self, data_batch, data_samples):
            self.results.append(len(data_samples))

        def compute_metrics(self, results):
            return dict(score=np.float64(0.25), count=np.int64(sum(results)))

    data = [dict(inputs=torch.randn(2)) for _ in range(4)]
    loader = dict(dataset=data, sampler=dict(type='DefaultSampler', shuffle=False),
                  batch_size=2)
    runner = Runner(
        model=Toy(), work_dir=str(tmp_path), train_dataloader=loader, val_dataloader=loader,
        val_evaluator=[Metric()], val_cfg=dict(), default_scope='mmengine',
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        param_scheduler=[dict(type='LinearLR', start_factor=0.1, by_epoch=True, end=1)],
        train_cfg=dict(by_epoch=True, max_epochs=1, val_interval=1),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)))
    runner.train()
    runner.save_checkpoint(str(tmp_path), 'after_val.pth')  # with the validation's scalars
    path = str(tmp_path / 'after_val.pth')
    if hasattr(torch.serialization, 'get_unsafe_globals_in_checkpoint'):  # not in torch 2.1
        assert 'builtins.getattr' in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    checkpoint = load_local_checkpoint(path)
    assert set(checkpoint) >= {'meta', 'state_dict', 'message_hub', 'optimizer',
                               'param_schedulers'}
    assert foreign_objects(checkpoint) == []
    hub = runner.message_hub.state_dict()
    loaded = checkpoint['message_hub']
    assert loaded['log_scalars'].keys() == hub['log_scalars'].keys()
    for key, buffer in hub['log_scalars'].items():
        assert isinstance(loaded['log_scalars'][key], HistoryBuffer)
        np.testing.assert_array_equal(loaded['log_scalars'][key].data[0], buffer.data[0])
        assert loaded['log_scalars'][key].statistics('mean') == buffer.statistics('mean')
    assert loaded['runtime_info'] == hub['runtime_info']
    torch.testing.assert_close(checkpoint['state_dict'], runner.model.state_dict())
