"""Learning-rate schedules: diffusers' formulas, as pure functions of the step."""
from __future__ import annotations

import math

import pytest

from zoodip.errors import ZoodipError
from zoodip.lr_schedule import LR_SCHEDULERS, lr_at, lr_factor


def test_hand_computed_points():
    assert [lr_factor(s, "constant", 10, 100) for s in (0, 5, 99)] == [1.0, 1.0, 1.0]  # ignores warmup
    assert [lr_factor(s, "constant_with_warmup", 4, 100) for s in (0, 1, 4, 99)] == [0.0, 0.25, 1.0, 1.0]
    assert lr_factor(2, "linear", 4, 100) == 0.5
    assert lr_factor(52, "linear", 4, 100) == pytest.approx(0.5)
    assert lr_factor(100, "linear", 4, 100) == 0.0
    assert lr_factor(4, "cosine", 4, 104) == 1.0
    assert lr_factor(54, "cosine", 4, 104) == pytest.approx(0.5)
    assert lr_factor(104, "cosine", 4, 104) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(54, 0.02, "cosine", 4, 104) == pytest.approx(0.01)
    assert lr_factor(10, "linear", 0, 10) == 0.0 and lr_factor(0, "linear", 0, 10) == 1.0
    with pytest.raises(ZoodipError, match="^lr_scheduler must be one of"):
        lr_factor(0, "polynomial", 0, 10)


@pytest.mark.parametrize("kind", LR_SCHEDULERS)
def test_matches_diffusers_get_scheduler(kind):
    """Rates of every step agree with diffusers' scheduler run on a torch optimizer."""
    torch = pytest.importorskip("torch")
    optimization = pytest.importorskip("diffusers.optimization")
    warmup, total = 7, 40
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = optimization.get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    for step in range(total + 3):
        assert lr_factor(step, kind, warmup, total) == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-12), step
        optimizer.step()
        scheduler.step()
    assert not math.isnan(lr_factor(0, kind, 0, 0))
