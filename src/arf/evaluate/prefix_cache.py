"""WiSE-FT sweeps: encode each set's frozen image-tower prefix once, run only the rest of the tower at each α.

A run with ``freeze_image_blocks: N`` leaves the stem and first N blocks of an EfficientNet trunk bit-identical in
θ0 and θ1, and :func:`arf.evaluate.wise.interpolate` keeps such tensors as they are, so that prefix computes the
same activations at every α. Decoding every image and running the prefix again per α is wasted work:
:class:`PrefixFeatures` keeps each set's prefix output and runs only ``suffix`` per α.

The records must not change, so the cache reproduces :func:`arf.evaluate.runner.encode_set` to the bit: the same
loader (same unreadable images dropped, labels in the same order) and the same batches through the same modules,
activations kept per batch in the model's dtype. Two guards: the first batch is also run through the whole tower
once (the cache is switched off if the two differ), and the prefix weights are compared with the cached ones at
every call (a changed prefix falls back to ``encode_set``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arf.evaluate.runner import EvalOptions, encode_set, set_fingerprint
from arf.models.base import eval_mode
from arf.models.prefix_store import PrefixActs, PrefixStore
from arf.models.trunk import MAX_CACHE_BYTES, TrunkSplit, find_shared_split, prefix_activations, same_state

log = logging.getLogger(__name__)


class PrefixFeatures:
    """An ``ImageFeatures`` for :func:`arf.evaluate.evaluate`: cached prefix, suffix run per call.

    Bound to one ``model`` (the bundle the sweep loads each α into) and its ``split``. Sets are cached lazily, on
    their first evaluation, so a resumed sweep whose records are all done encodes nothing. ``max_bytes`` caps all
    sets together; a set past it is encoded in full at each α, like a model without a split.
    """

    def __init__(self, model: nn.Module, split: TrunkSplit, max_bytes: int = MAX_CACHE_BYTES,
                 store: PrefixStore | None = None) -> None:
        self.model = model
        self.split = split
        self.max_bytes = max_bytes
        self.store = store
        self.reference = {k: v.detach().clone() for k, v in split.prefix_state().items()}
        self.sets: dict[tuple[str, int], PrefixActs | None] = {}  # None: not cacheable, use encode_set
        self.verified = False
        self.disabled = False

    @classmethod
    def for_models(cls, model0: nn.Module, model1: nn.Module, max_bytes: int = MAX_CACHE_BYTES,
                   store: PrefixStore | None = None) -> PrefixFeatures | None:
        """A cache over ``model0`` for the image-tower prefix both models hold bit-identically, or None."""
        split = find_shared_split(model0, model1)
        if split is None:
            log.info("WiSE-FT: no image-tower prefix is identical in both models; each alpha encodes images in full")
            return None
        log.info("WiSE-FT: stem and first %d image blocks are identical in both models; their output is computed "
                 "once per set", split.n)
        return cls(model0, split, max_bytes, store)

    @property
    def used_bytes(self) -> int:
        return sum(e.nbytes for e in self.sets.values() if e is not None)

    def __call__(self, bundle: Any, ds: Any, opts: EvalOptions) -> tuple[torch.Tensor, torch.Tensor]:
        if self.disabled or bundle.model is not self.model:
            return encode_set(bundle, ds, opts)
        if not same_state(self.split.prefix_state(), self.reference):
            # Cannot happen in a sweep (the prefix is shared by θ0 and θ1); refuse rather than serve stale features.
            log.warning("the image-tower prefix changed since it was cached; encoding %s in full", ds.name)
            return encode_set(bundle, ds, opts)
        # BatchNorm must use its running stats, as encode_set does.
        with eval_mode(bundle.model), torch.no_grad():
            entry = self._activations(bundle, ds, opts)
            if entry is None:
                return encode_set(bundle, ds, opts)
            device = torch.device(opts.device)
            feats = [F.normalize(self.split.suffix(h.to(device)), dim=-1).float().cpu()
                     for h, _, _ in entry.batches(self.split.dtype)]
        if not feats:
            return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
        return torch.cat(feats), entry.labels

    def _activations(self, bundle: Any, ds: Any, opts: EvalOptions) -> PrefixActs | None:
        """The set's prefix output, computed (or read from the store) on first use; None if it does not fit or
        the check of the split failed."""
        # Batch composition is part of the key: the cached batches must be the ones encode_set would form.
        key = (set_fingerprint(ds), opts.batch_size)
        if key not in self.sets:
            # Stored only once complete: a set failing on bad images raises (as encode_set does) and caches nothing.
            self.sets[key] = prefix_activations(
                self.split, ds, bundle.preprocess_val, torch.device(opts.device), opts.batch_size,
                num_workers=opts.num_workers, max_bytes=self.max_bytes - self.used_bytes, store=self.store,
                first=None if self.verified else self._verify, progress=f"prefix {ds.name}" if opts.progress else None)
        return self.sets[key]

    def _verify(self, x: torch.Tensor, h: torch.Tensor) -> bool:
        """Whether ``suffix(prefix(x))`` is bit-identical to ``encode_image(x)``; if not, the cache is switched off."""
        whole = self.model.encode_image(x, normalize=True)
        split = F.normalize(self.split.suffix(h), dim=-1)
        self.verified = whole.shape == split.shape and torch.equal(whole, split)
        if not self.verified:
            log.warning("the split image tower does not reproduce encode_image exactly; prefix cache switched off")
            self.disabled = True
        return self.verified
