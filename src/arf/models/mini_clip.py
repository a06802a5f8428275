"""``arf:mini-clip`` (filled below)."""

from __future__ import annotations

from typing import Any


def localize_model_cfg(model_cfg: dict[str, Any]) -> dict[str, Any]:
    return model_cfg


def load_mini_clip(device: Any = "cpu") -> Any:
    from arf.errors import ArfError

    raise ArfError("arf:mini-clip is not built yet; run `arf base build`")
