"""Loading files that came from somewhere else (checkpoints, state dicts) without running code from them.

A ``.pt``/``.bin`` file is a pickle: unpickling an untrusted one can run any command (its ``__reduce__`` names
``os.system``). Everything here goes through safetensors or ``torch.load(..., weights_only=True)``, whose
unpickler only rebuilds tensors and plain containers, and turns a refusal into one :class:`UnsafeFileError` that
names the file and what it tried to import.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

from arf.errors import ArfError, InputFileError

__all__ = ["UnsafeFileError", "load_state_dict", "safe_torch_load"]


class UnsafeFileError(ArfError, pickle.UnpicklingError):
    """A file would execute code (or build arbitrary objects) if loaded; it was refused."""


def _refusal(path: Path, message: str) -> UnsafeFileError:
    """Turn torch's long weights_only message into one line naming the file and what it tried to import."""
    m = re.search(r"GLOBAL ([\w.]+)", message)
    if m:
        return UnsafeFileError(
            f"refusing to load {path}: it is a pickle that imports {m.group(1)}, and unpickling it could run code; "
            "only plain tensor files (state dicts) or .safetensors are loaded"
        )
    op = re.search(r"Unsupported operand (\d+)", message)
    return UnsafeFileError(
        f"refusing to load {path}: not a plain tensor file (corrupt, or a pickle using instructions the safe "
        f"loader refuses{f': opcode {op.group(1)}' if op else ''}); only state dicts or .safetensors are loaded"
    )


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: tensors, dicts, lists and numbers only, never code.

    Raises :class:`InputFileError` for a missing or unreadable file and :class:`UnsafeFileError` for a pickle
    that references anything beyond tensors (a crafted file whose unpickling would call ``os.system``).
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{p}: file not found")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(p, str(e)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, OSError) as e:
        # Truncated downloads and non-torch files land here; the message names the file, not torch's internals.
        raise InputFileError(f"{p}: cannot read as a torch file ({type(e).__name__}: {str(e)[:200]})") from None


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Tensors from a ``.safetensors`` file, or from a torch file loaded safely; always a ``{name: tensor}`` dict."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{p}: file not found")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise InputFileError(f"{p}: not a valid safetensors file ({e})") from None
    obj = safe_torch_load(p)
    # Training scripts often wrap the weights: {"state_dict": {...}} (open_clip) or {"model": {...}}.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputFileError(f"{p}: expected a state dict of tensors, got {type(obj).__name__}")
    return obj
