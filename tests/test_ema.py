import math

import pytest
import torch
from torch import nn

from contrastive.ema import cosine_momentum, ema_update, frozen_copy


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_ema_update_averages_parameters_and_copies_buffers():
    torch.manual_seed(0)
    online, target = _net(), _net()
    online(torch.randn(8, 3))  # moves the online BatchNorm statistics
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, momentum=0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        torch.testing.assert_close(t, o)


def test_momentum_one_freezes_and_zero_copies():
    torch.manual_seed(0)
    online, target = _net(), _net()
    frozen = [p.clone() for p in target.parameters()]
    ema_update(target, online, momentum=1.0)
    assert all(torch.equal(t, f) for t, f in zip(target.parameters(), frozen, strict=True))
    ema_update(target, online, momentum=0.0)
    assert all(
        torch.equal(t, o) for t, o in zip(target.parameters(), online.parameters(), strict=True)
    )
    with pytest.raises(ValueError, match="momentum"):
        ema_update(target, online, momentum=1.5)


def test_cosine_momentum_schedule_endpoints_and_midpoint():
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert cosine_momentum(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    assert cosine_momentum(500, 100, 0.99) == pytest.approx(1.0)  # clamped past the end
    steps = [cosine_momentum(s, 10, 0.9) for s in range(11)]
    assert steps == sorted(steps)
    assert steps[3] == pytest.approx(1 - 0.1 * (math.cos(math.pi * 0.3) + 1) / 2)


def test_frozen_copy_has_no_gradient_path():
    online = _net()
    target = frozen_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
