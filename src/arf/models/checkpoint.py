"""Checkpoints: ``open_clip_model.safetensors`` + ``open_clip_config.json`` + ``arf.json`` in one folder.

The first two are open_clip's own local-dir format, so a finetuned open_clip-family model loads in plain
open_clip (``create_model_and_transforms("local-dir:<dir>")`` or ``(name, pretrained=<file>)``). ``arf.json``
holds the model id, the ARF version, ``bundle.info`` (enough to rebuild any family, including ``hf:``) and ``env``,
the library versions and hardware that made it (:mod:`arf.provenance`: results differ between CPU models).
Each file is written atomically and ``arf.json`` last, so a folder without it is an unfinished save.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import pickle
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from arf.errors import ConfigError, InputFileError
from arf.io import atomic_path, read_json, write_json
from arf.models.base import ClipBundle

WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"
ARF_JSON = "arf.json"
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def state_fingerprint(items: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Hash of named tensors: each name, dtype, shape and the bytes of its data.

    The buffer is hashed in place, not through ``.tobytes()``: the copy cost 7 % of a fingerprint
    (benchmarks/bench_cached_rerun.py).
    """
    h = hashlib.sha256()
    for name, t in items:
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def save_checkpoint(bundle: ClipBundle, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``bundle`` to ``out_dir`` (created); ``extra`` is merged into ``arf.json``. Returns ``out_dir``."""
    from safetensors.torch import save_file

    from arf import __version__
    from arf.provenance import environment

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared storage; contiguous clones also drop views into bigger buffers.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in bundle.model.state_dict().items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "model_id": bundle.model_id})
    family = bundle.info.get("family")
    hf_text = family == "hf" or bool(bundle.info.get("model_cfg", {}).get("text_cfg", {}).get("hf_tokenizer_name"))
    if hf_text and hasattr(bundle.tokenizer, "save_pretrained"):
        # open_clip's local-dir loader (and ours for hf:) reads an HF tokenizer from the checkpoint folder itself.
        bundle.tokenizer.save_pretrained(str(out))
    if family == "open_clip":
        write_json(out / OPEN_CLIP_CONFIG, {"model_cfg": bundle.info["model_cfg"],
                                            "preprocess_cfg": bundle.info["preprocess_cfg"]})
    meta = {"model_id": bundle.model_id, "arf_version": __version__, "info": bundle.info, "env": environment()}
    meta.update(extra or {})
    write_json(out / ARF_JSON, meta)
    return out


def is_checkpoint_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / ARF_JSON).is_file() or (p / OPEN_CLIP_CONFIG).is_file())


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file, or a torch file loaded with ``weights_only=True`` (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise InputFileError(f"cannot read checkpoint {path}: {e}") from e
    if path.suffix not in _TORCH_SUFFIXES:
        raise InputFileError(f"checkpoint {path}: unknown weights format; use .safetensors or {_TORCH_SUFFIXES}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses arbitrary globals: the file would execute code when unpickled.
        raise InputFileError(f"refusing to load {path}: it is a pickle that would run code (only plain tensors "
                             f"are accepted; convert it to .safetensors)") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise InputFileError(f"cannot read checkpoint {path}: {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputFileError(f"checkpoint {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path, arch: str) -> None:
    """Strictly load ``state``; on any mismatch raise one line naming the first bad key."""
    own = model.state_dict()
    # open_clip's loader also drops this key (transformers >= 4.31 made it a non-persistent buffer).
    state = {k: v for k, v in state.items() if not (k.endswith("embeddings.position_ids") and k not in own)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shape:
        if shape:
            k = shape[0]
            first = f"key {k!r} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)}"
        elif missing:
            first = f"missing key {missing[0]!r}"
        else:
            first = f"unexpected key {unexpected[0]!r}"
        n = len(missing) + len(unexpected) + len(shape) - 1
        more = f" (and {n} more mismatches)" if n else ""
        raise InputFileError(f"checkpoint {source} does not fit architecture {arch}: {first}{more}")
    model.load_state_dict(state, strict=True)


def _find_weights(folder: Path) -> Path:
    for name in (WEIGHTS, "open_clip_pytorch_model.safetensors", "model.safetensors",
                 "open_clip_pytorch_model.bin", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise InputFileError(f"checkpoint folder {folder} has no weights file ({WEIGHTS})")


def read_checkpoint_meta(folder: str | Path) -> dict[str, Any]:
    """``arf.json`` if present, else one rebuilt from open_clip's ``open_clip_config.json``."""
    folder = Path(folder)
    try:
        if (folder / ARF_JSON).is_file():
            return read_json(folder / ARF_JSON)
        if (folder / OPEN_CLIP_CONFIG).is_file():
            cfg = read_json(folder / OPEN_CLIP_CONFIG)
            return {"model_id": str(folder), "info": {"family": "open_clip", "model_cfg": cfg["model_cfg"],
                                                      "preprocess_cfg": cfg.get("preprocess_cfg", {})}}
    except (ValueError, KeyError) as e:
        raise InputFileError(f"checkpoint {folder}: unreadable config ({e})") from e
    raise _not_a_checkpoint(folder)


def _not_a_checkpoint(folder: Path) -> InputFileError:
    msg = f"not a checkpoint folder (no {ARF_JSON} or {OPEN_CLIP_CONFIG}): {folder}"
    # The commonest slip: `arf train`'s run folder given where its model is meant.
    if is_checkpoint_dir(folder / "final"):
        msg += f"; it is a training run, whose model is {folder / 'final'}"
    elif (folder / "checkpoints").is_dir():
        msg += "; it is an unfinished training run (no final/ yet: arf train --resume latest finishes it)"
    return InputFileError(msg)


_SKIP_INIT: contextvars.ContextVar[bool] = contextvars.ContextVar("arf_skip_init_on_load", default=False)


@contextlib.contextmanager
def skip_init_on_load() -> Iterator[None]:
    """Checkpoints loaded inside the block skip the architecture's random initialisation (transformers'
    ``no_init_weights``): every weight is overwritten by the strict load anyway, and on the offline base the
    initialisation is three quarters of a load (0.24 s → 0.06 s, benchmarks/bench_cached_rerun.py; a cached
    `arf demo --full` re-run loads 170 models).

    Not the default because the initialisation draws from the global RNG: training seeds, loads its model and then
    takes dropout masks from that stream, so skipping the draws would change every trained model's numbers. Use it
    where nothing random follows a load without a fresh seed (evaluation, WiSE-FT). Models that are meant to be
    random (``arf:tiny-clip``, an ``openclip:`` name without pretrained weights) are not checkpoint loads and keep
    their initialisation.
    """
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


def _no_init_weights() -> contextlib.AbstractContextManager[Any]:
    try:
        from transformers.initialization import no_init_weights  # transformers >= 5
    except ImportError:  # 4.x
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> ClipBundle:
    """Rebuild a bundle from a checkpoint folder, or from a weights file whose folder holds the configs."""
    from arf.models.openclip import bundle_from_cfg

    path = Path(path).expanduser()
    if not path.exists():
        raise InputFileError(f"checkpoint not found: {path}")
    folder, weights = (path, None) if path.is_dir() else (path.parent, path)
    if weights is not None and not is_checkpoint_dir(folder):
        # A bare weights file (an open_clip training run's epoch_N.pt, say) does not say its architecture.
        raise InputFileError(f"checkpoint {path}: a weights file loads only with the {ARF_JSON} or "
                             f"{OPEN_CLIP_CONFIG} saved beside it, and {folder} has neither; for open_clip "
                             f"weights name the architecture: openclip:<name>@{path}")
    meta = read_checkpoint_meta(folder)
    weights = weights or _find_weights(folder)
    info = meta.get("info", {})
    family = info.get("family")
    state = load_state_dict(weights)
    build = _no_init_weights() if _SKIP_INIT.get() else contextlib.nullcontext()
    if family == "open_clip":
        from arf.models.mini_clip import localize_model_cfg

        model_cfg = localize_model_cfg(info["model_cfg"])
        with build:
            bundle = bundle_from_cfg(model_cfg, info["preprocess_cfg"], str(path),
                                     extra_info={k: v for k, v in info.items()
                                                 if k not in ("family", "model_cfg", "preprocess_cfg")})
        arch = meta.get("model_id", "open_clip")
    elif family == "hf":
        from arf.models.hf import bundle_from_info

        with build:
            bundle = bundle_from_info(info, str(path))
        arch = meta.get("model_id", "hf")
    else:
        raise ConfigError(f"checkpoint {folder}: unknown model family {family!r} in {ARF_JSON}; "
                          f"choose from open_clip, hf")
    load_into(bundle.model, state, weights, arch)
    bundle.model.to(device)
    bundle.info["source_model_id"] = meta.get("model_id")
    return bundle


def check_loadable(path: str | Path) -> None:
    """Raise :class:`ArfError` unless ``path`` looks like a checkpoint (cheap; reads no weights)."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"checkpoint not found: {p}")
    if p.is_dir() and not is_checkpoint_dir(p):
        raise _not_a_checkpoint(p)
