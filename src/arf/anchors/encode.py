"""Small helpers that run a ClipBundle's towers on lists of texts / images and return unit-norm numpy arrays."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from arf.io import atomic_path

log = logging.getLogger(__name__)


def load_bundle(model: Any, device: str = "cpu") -> Any:
    """A ClipBundle from a model id / checkpoint path, or the bundle itself."""
    if isinstance(model, str):
        import arf.models

        return arf.models.create_model(model, device=device)
    return model


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run per-image preprocessing with one torch thread: tiny tensor ops under an OpenMP pool on a busy machine
    cost ~100x more (72 ms vs 0.6 ms per 112 px image measured here); the model forward keeps every thread."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def preprocess_batch(bundle: Any, images: Sequence[Any]) -> Any:
    import torch

    with single_thread():
        return torch.stack([bundle.preprocess_val(im) for im in images])


def _device(bundle: Any) -> Any:
    import torch

    try:
        return next(bundle.model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _all_tokens(bundle: Any, texts: Sequence[str], pad_id: int, chunk: int = 4096) -> Any:
    """Every text's tokens in one tensor, as wide as the longest text. Tokenized in chunks, each trimmed first: a
    whole corpus in one tokenizer call would hold every text's tokenizer output, padded to the context, at once."""
    import torch
    import torch.nn.functional as F

    from arf.models.text import trim_padding

    parts = [trim_padding(bundle.tokenizer(list(texts[i:i + chunk])), pad_id) for i in range(0, len(texts), chunk)]
    width = max(p.shape[1] for p in parts)
    return torch.cat([F.pad(p, (0, width - p.shape[1]), value=pad_id) for p in parts])


def encode_texts(bundle: Any, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Unit-norm float32 embeddings of ``texts``, row ``i`` for ``texts[i]``.

    For a tower that masks padding (``text_pad_id``) the texts are encoded shortest first, each batch without
    its all-padding columns, then put back in order: a corpus of ~8-token texts was padded to the whole context
    (MiniLM: 32), and a batch is only as short as its longest text, so similar lengths share a batch. Other
    towers get their full context, in the given order.
    """
    import torch

    from arf.models.text import text_pad_id, token_lengths, trim_padding

    dev = _device(bundle)
    bundle.model.eval()
    n = len(texts)
    pad = text_pad_id(bundle.model)
    order = None
    if pad is None or n == 0:
        batches: Iterator[Any] = (bundle.tokenizer(list(texts[i:i + batch_size])) for i in range(0, n, batch_size))
    else:
        tokens = _all_tokens(bundle, texts, pad)
        order = torch.argsort(token_lengths(tokens, pad), stable=True)
        batches = (trim_padding(tokens[order[i:i + batch_size]], pad) for i in range(0, n, batch_size))
    out = []
    with torch.inference_mode():
        for batch in batches:
            out.append(bundle.model.encode_text(batch.to(dev), normalize=True).float().cpu().numpy())
    if not out:
        return np.zeros((0, 0), np.float32)
    emb = np.concatenate(out)
    if order is None:
        return emb
    restored = np.empty_like(emb)
    restored[order.numpy()] = emb
    return restored


def encode_pils(bundle: Any, images: Sequence[Any], batch_size: int = 64) -> np.ndarray:
    import torch

    out = []
    dev = _device(bundle)
    bundle.model.eval()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            batch = preprocess_batch(bundle, images[i:i + batch_size]).to(dev)
            out.append(bundle.model.encode_image(batch, normalize=True).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def class_text_queries(bundle: Any, classnames: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """One unit vector per class: the mean of its prompt embeddings, renormalised (the zero-shot head of CLIP)."""
    templates = [t.replace("{c}", "{}") for t in templates] or ["a photo of a {}."]
    # All prompts in large batches: one forward per class costs ~100x more on CPU (measured: 250 s vs ~3 s for
    # 300 classes).
    emb = encode_texts(bundle, [t.format(name) for name in classnames for t in templates])
    mean = emb.reshape(len(classnames), len(templates), -1).mean(axis=1)
    return (mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def text_cache_key(bundle: Any, texts: Sequence[str]) -> str:
    """What text embeddings depend on: the model's non-visual weights (by content, not by id — a rebuilt or
    retrained model under the same id must not reuse them) and the exact texts in order."""
    import hashlib

    from arf.config import config_hash
    from arf.evaluate.zeroshot import text_fingerprint

    texts_sha = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    return config_hash(text_fingerprint(bundle.model), texts_sha, len(texts))


def encode_texts_cached(bundle: Any, texts: Sequence[str], cache_dir: str | Path | None,
                        batch_size: int = 256) -> np.ndarray:
    """:func:`encode_texts`, kept as ``<cache_dir>/text_emb_<key>.npy`` (written atomically) and read back on
    the next call with the same model weights and texts; ``cache_dir`` None encodes every time."""
    if cache_dir is None:
        return encode_texts(bundle, texts, batch_size)
    path = Path(cache_dir) / f"text_emb_{text_cache_key(bundle, texts)}.npy"
    if path.is_file():
        try:
            emb = np.load(path, allow_pickle=False)
            if emb.ndim == 2 and emb.shape[0] == len(texts):
                log.info("text embeddings of %d texts read from %s", len(texts), path)
                return emb
        except (OSError, ValueError):
            pass
        log.warning("%s is unreadable or of the wrong shape; encoding again", path)
    emb = encode_texts(bundle, texts, batch_size)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, emb, allow_pickle=False)
    log.info("text embeddings of %d texts cached in %s", len(texts), path)
    return emb
