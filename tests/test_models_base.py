"""arf.models.base: the eval_mode context every frozen pass, evaluation and head build runs under."""

from __future__ import annotations

import pytest
import torch

from arf.models.base import eval_mode


def test_eval_mode_restores_the_module_mode_also_after_an_error() -> None:
    m = torch.nn.Sequential(torch.nn.Dropout(0.5))
    with eval_mode(m):
        assert not m.training and not m[0].training
    assert m.training and m[0].training
    with pytest.raises(RuntimeError), eval_mode(m):
        raise RuntimeError("a failed batch")
    assert m.training and m[0].training
    m.eval()
    with eval_mode(m):
        pass
    assert not m.training  # a module in eval mode stays in it
