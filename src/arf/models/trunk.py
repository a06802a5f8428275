"""CPU budgets: run a frozen image-tower prefix without autograd and cache its output (text padding: arf.models.text).

With ``freeze_image_blocks: N`` the stem and the first N blocks never change, so their output for an image is a
constant. :class:`TrunkSplit` cuts the image tower there: ``prefix`` (run under ``no_grad``; with no augmentation
its output is computed once per finetuning image and cached) and ``suffix`` (trained). On the offline mini-clip
(EfficientNet-Lite0, 7 stages, 112 px, batch 64, 2 busy cores) the image forward + backward of a step went from
17.3 s (full tower) to 2.4 s (5 stages frozen and cached); see the issue report for the measurement.

Only towers whose forward we can split exactly are supported (timm EfficientNet-style trunks inside open_clip's
``TimmModel``); for others (e.g. open_clip's ViT with its many pooling variants) :func:`find_split` returns
``None`` and the frozen blocks are simply excluded from the optimizer.

The same split serves WiSE-FT evaluation: :func:`find_shared_split` finds the longest prefix two models hold
bit-identically (what ``freeze_image_blocks`` left alone), whose output is then the same at every α
(``arf.evaluate.prefix_cache``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from arf.models.prefix_store import PrefixActs, PrefixStore, store_key

log = logging.getLogger(__name__)

# Default memory for cached prefix activations (float32 on the offline mini-clip: ~22 KB per image at 5 blocks).
MAX_CACHE_BYTES = 4 << 30


class TrunkSplit:
    """``suffix(prefix(x)) == visual(x)`` for a timm trunk (conv_stem, bn1, blocks, conv_head, bn2) + head."""

    def __init__(self, visual: nn.Module, n_blocks: int) -> None:
        self.visual = visual
        self.trunk = visual.trunk
        self.n = n_blocks

    def prefix_modules(self) -> list[nn.Module]:
        """The modules :meth:`prefix` runs, in order (their state is what must stay fixed for a cache to hold)."""
        t = self.trunk
        return [t.conv_stem, t.bn1, *t.blocks[: self.n]]

    @property
    def dtype(self) -> torch.dtype:
        """The prefix's parameter dtype (that of its output; float32 if it has no parameters)."""
        return next((p.dtype for m in self.prefix_modules() for p in m.parameters()), torch.float32)

    def prefix_state(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers of the prefix (BatchNorm running stats included), keyed by module position."""
        return {f"{i}.{k}": v for i, m in enumerate(self.prefix_modules()) for k, v in m.state_dict().items()}

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for m in self.prefix_modules():
            h = m(h)
        return h

    def suffix(self, h: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        # timm's own checkpointing lives in forward_features, which this path bypasses: apply it per block here.
        recompute = getattr(t, "grad_checkpointing", False) and torch.is_grad_enabled()
        for blk in t.blocks[self.n:]:
            h = torch.utils.checkpoint.checkpoint(blk, h, use_reentrant=False) if recompute else blk(h)
        h = t.forward_head(t.bn2(t.conv_head(h)))
        return self.visual.head(h)


def find_split(model: nn.Module, n_blocks: int) -> TrunkSplit | None:
    """A split after ``n_blocks`` blocks if the image tower is a supported timm trunk, else None."""
    visual = getattr(model, "visual", None)
    trunk = getattr(visual, "trunk", None)
    needed = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "forward_head")
    if n_blocks <= 0 or trunk is None or not all(hasattr(trunk, a) for a in needed) or not hasattr(visual, "head"):
        return None
    if n_blocks >= len(trunk.blocks):
        return None
    return TrunkSplit(visual, n_blocks)


def same_state(a: Any, b: Any) -> bool:
    """Whether two state dicts (or modules) hold the same keys with bit-identical tensors (dtype and shape too)."""
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k].to(sa[k].device))
        for k in sa
    )


def find_shared_split(model0: nn.Module, model1: nn.Module) -> TrunkSplit | None:
    """A split of ``model0`` after the most leading blocks that ``model1`` holds bit-identically, else None.

    Detected from the weights, not from a config: the stem (``conv_stem``, ``bn1``) and each leading block must
    have equal parameters *and* buffers (running stats, ``num_batches_tracked``) in both models. Such tensors are
    left as they are by :func:`arf.evaluate.wise.interpolate`, so the prefix computes the same function at every
    α. At most ``len(blocks) - 1`` blocks: :func:`find_split` keeps one block in the suffix. None when either
    model has no supported trunk or not even the stem and first block are shared.
    """
    s0, s1 = find_split(model0, 1), find_split(model1, 1)
    if s0 is None or s1 is None:
        return None
    t0, t1 = s0.trunk, s1.trunk
    shared = 0
    for m0, m1 in zip([t0.conv_stem, t0.bn1, *t0.blocks], [t1.conv_stem, t1.bn1, *t1.blocks], strict=False):
        if not same_state(m0, m1):
            break
        shared += 1
    n_blocks = min(shared - 2, len(t0.blocks) - 1)  # the first two shared modules are the stem
    return find_split(model0, n_blocks)


def prefix_batches(split: TrunkSplit, ds: Any, transform: Any, device: torch.device, batch_size: int = 64,
                   num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(images, prefix output, labels, indices)`` per loader batch of ``ds``, unreadable images dropped.

    ``ds`` is a labelled set or an ``ImageDataset`` (given no transform, it gets ``transform``). A set is read
    through :meth:`arf.data.ImageDataset.from_set` and :func:`arf.data.make_loader`, as in evaluation, so batches
    hold the same images in the same order and a bad-image fraction fails the same way.
    """
    import arf.data

    data = ds if isinstance(ds, arf.data.ImageDataset) else arf.data.ImageDataset.from_set(ds, transform)
    if data.transform is None:
        data.transform = transform
    for x, y, idx in arf.data.make_loader(data, batch_size=batch_size, num_workers=num_workers):
        x = x.to(device)
        yield x, split.prefix(x), y, idx


def cache_fits(n_items: int, h: torch.Tensor, max_bytes: int) -> bool:
    """Whether ``n_items`` activations shaped like ``h[0]`` fit in ``max_bytes`` (a refusal is logged)."""
    need = n_items * h[0].numel() * h.element_size()
    if need > max_bytes:
        log.info("not caching frozen image activations: %.1f GB > %.1f GB", need / 1e9, max_bytes / 1e9)
        return False
    return True


@torch.no_grad()
def prefix_activations(
    split: TrunkSplit, ds: Any, transform: Any, device: torch.device, batch_size: int = 64, *, num_workers: int = 0,
    max_bytes: int = MAX_CACHE_BYTES, store: PrefixStore | None = None,
    first: Callable[[torch.Tensor, torch.Tensor], bool] | None = None, progress: str | None = None,
) -> PrefixActs | None:
    """The prefix output of every image of ``ds`` (eval transform, :func:`prefix_batches`' batches), or None.

    None if it would exceed ``max_bytes`` or ``first`` — called with the first batch's pixels and prefix output, e.g.
    to check the split against the whole tower — returns False. With a ``store`` an entry for the same prefix, images,
    transform and batches is read instead of computing them, once the first batch, computed afresh, matches it
    bit for bit (an entry this process wrote or checked is read without that, unless ``first`` needs the batch); a
    computed result is stored. ``progress`` names a progress bar over the batches.
    """
    import arf.data
    from arf.progress import progress_bar

    n_items = len(ds)
    key = None
    if store is not None:
        data = ds if isinstance(ds, arf.data.ImageDataset) else arf.data.ImageDataset.from_set(ds, transform)
        key = store_key(split, data, transform, batch_size, device)
    if store is not None and key is not None and first is None and store.is_checked(key):
        # Written or checked by this process and unchanged since: no batch to decode.
        stored = store.get(key, n_items)
        if stored is not None and stored.nbytes <= max_bytes:
            _log_read(stored, n_items, store.path(key))
            return stored
    batches: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = prefix_batches(
        split, ds, transform, device, batch_size, num_workers)
    if progress is not None:
        batches = iter(progress_bar(batches, desc=progress, unit="batch", leave=False))
    try:
        head = next(batches, None)
        if head is None:  # nothing readable (an empty set; a bad-image fraction over the limit raised instead)
            return PrefixActs(torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), [])
        x, h, y, idx = head
        if first is not None and not first(x, h):
            return None
        # float32 rows (float64 kept as it is), so that casting back to the model's dtype is exact.
        dtype = torch.promote_types(h.dtype, torch.float32)
        h = h.to(dtype).cpu()
        if store is not None and key is not None:
            stored = store.get(key, n_items)
            n0 = len(idx)
            if stored is not None and stored.nbytes <= max_bytes and (
                    stored.batch_sizes[:1] == [n0] and torch.equal(stored.indices[:n0], idx)
                    and torch.equal(stored.labels[:n0], y) and torch.equal(stored.dense[idx], h)):
                store.mark_checked(key)
                _log_read(stored, n_items, store.path(key))
                return stored
            if stored is not None:
                log.warning("prefix store: %s differs from its first batch computed now (other kernels?); "
                            "computing it again", store.path(key))
        if not cache_fits(n_items, h, max_bytes):
            return None
        dense = torch.full((n_items, *h.shape[1:]), float("nan"), dtype=dtype)
        indices, labels, sizes = [], [], []
        for _, h, y, idx in itertools.chain([head], batches):
            dense[idx] = h.to(dtype).cpu()
            indices.append(idx)
            labels.append(y)
            sizes.append(len(idx))
        acts = PrefixActs(dense, torch.cat(indices), torch.cat(labels), sizes)
        if store is not None and key is not None:
            store.put(key, acts)
        return acts
    finally:
        # A store hit stops after the first batch: close the loader (and its bar) now, not at collection.
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _log_read(acts: PrefixActs, n_items: int, path: Any) -> None:
    log.info("frozen-prefix activations of %d images (%d unreadable when computed) read from %s", n_items,
             acts.unreadable, path)


def encode_prefix(split: TrunkSplit, ds: Any, transform: Any, device: torch.device, batch_size: int = 64,
                  max_bytes: int = MAX_CACHE_BYTES, store: PrefixStore | None = None) -> torch.Tensor | None:
    """The prefix output for every image of ``ds`` (eval transform), or None if it would exceed ``max_bytes``.

    ``ds`` is a labelled set or an ``ImageDataset`` (e.g. the anchor images). Rows of unreadable images (counted
    and skipped by the loader) stay NaN, so callers can tell them apart. ``store``: see :func:`prefix_activations`.
    """
    acts = prefix_activations(split, ds, transform, device, batch_size, max_bytes=max_bytes, store=store)
    return None if acts is None or not acts.batch_sizes else acts.dense.float()
