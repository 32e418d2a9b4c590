import torch
from mmengine.config import Config

from asmlp_mm.compat import AutocastOptimWrapper, enable_amp


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


def test_enable_amp_picks_the_cpu_wrapper():
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD'))))
    enable_amp(cfg)
    expected = 'AmpOptimWrapper' if torch.cuda.is_available() else 'AutocastOptimWrapper'
    assert cfg.optim_wrapper.type == expected
