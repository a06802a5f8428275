"""Frozen image-prefix activations kept on disk and shared by every run that would compute the same ones.

Runs that freeze the stem and first N image blocks of one base compute the same prefix output for the same images:
the ft, flyp and arf runs of a demo and each of their seeds (the finetuning set, the anchors), and every WiSE-FT
sweep of them (θ0, the base, holds that prefix). Computed once, the activations are read back instead: for the
offline benchmark's 2,400 finetuning images on a 2-core Xeon, 8.0 s to compute, 0.24 s to read with the check
below, 0.03 s as the process that wrote them (benchmarks/bench_frozen_prefix.py, docs/BENCHMARKS.md run W).

An entry is one safetensors file named by a key of everything the activations depend on: the prefix's tensors
(weights and batch-norm buffers) and whether its modules are in training mode, the images (the loader's paths,
labels and border crop, each file's size and modification time), the transform, the batch size (cached batches are
the ones the caller would form: the same images in the same order through the same kernels), the dtype of the
model, the device type and torch's version. A reader still recomputes the first batch and compares it with the
entry's before trusting the rest (:func:`arf.models.trunk.prefix_activations`), so an entry copied from another
machine (other kernels) or left by other code is replaced, not served.

The store holds at most ``max_bytes`` of entries; the least recently used go first.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from arf.config import config_hash
from arf.io import atomic_path
from arf.models.checkpoint import state_fingerprint

log = logging.getLogger(__name__)

# Bumped when what an entry holds, or how its key is made, changes: older entries then simply miss.
FORMAT = 1
SUFFIX = ".safetensors"
# A writer killed mid-file leaves a hidden ``.<name>.*.tmp`` (arf.io.atomic_path); older than this it is no
# longer another process's write in progress.
STALE_TMP_SECONDS = 3600
# Entries this process wrote, or read after checking a fresh first batch against them: path -> (size, mtime_ns)
# since. Read again unchanged (the demo's later sweeps and runs), they are trusted without decoding a batch.
_CHECKED: dict[str, tuple[int, int]] = {}


@dataclass
class PrefixActs:
    """A dataset's prefix output, as the loader produced it.

    ``dense`` holds one float32 row per dataset item (NaN for an image the loader could not read); ``indices`` the
    readable items in loader order, ``labels`` theirs, ``batch_sizes`` how the loader grouped them.
    """

    dense: torch.Tensor
    indices: torch.Tensor
    labels: torch.Tensor
    batch_sizes: list[int]

    @property
    def nbytes(self) -> int:
        return self.dense.numel() * self.dense.element_size()

    @property
    def unreadable(self) -> int:
        return len(self.dense) - len(self.indices)

    def batches(self, dtype: torch.dtype | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(activations, labels, indices)`` per loader batch; ``dtype`` casts back to the model's (lossless from
        float32 for float16 / bfloat16 activations)."""
        start = 0
        for n in self.batch_sizes:
            idx = self.indices[start:start + n]
            h = self.dense[idx]
            yield (h if dtype is None else h.to(dtype)), self.labels[start:start + n], idx
            start += n


def data_fingerprint(data: Any) -> str | None:
    """What an :class:`arf.data.ImageDataset` feeds the model: its class (how it opens a path), paths, labels,
    border crop, and each file's size and modification time. None for in-memory sources (webdataset bytes), which
    have nothing on disk to compare against."""
    stats: dict[str, tuple[int, int] | None] = {}
    files = []
    for src in data.paths:
        if not isinstance(src, (str, os.PathLike)):
            return None
        # ``<shard>.tar#<key>`` refs (arf.train.data.AnchorImages) are checked by their shard file.
        path = str(src).split("#", 1)[0] if ".tar#" in str(src) else str(src)
        if path not in stats:
            try:
                st = os.stat(path)
                stats[path] = (st.st_size, st.st_mtime_ns)
            except OSError:
                stats[path] = None  # the loader counts it as unreadable; it stays so until the file appears
        files.append([str(src), stats[path]])
    return config_hash(type(data).__qualname__, getattr(data, "border_crop", 0), [int(y) for y in data.labels],
                       files)


def store_key(split: Any, data: Any, transform: Any, batch_size: int, device: torch.device | str) -> str | None:
    """The entry name for ``split``'s prefix over ``data`` (None where the data cannot be fingerprinted)."""
    data_fp = data_fingerprint(data)
    if data_fp is None:
        return None
    training = [any(m.training for m in mod.modules()) for mod in split.prefix_modules()]
    return config_hash(FORMAT, state_fingerprint(split.prefix_state().items()), training, data_fp, repr(transform),
                       int(batch_size), str(split.dtype), torch.device(device).type, torch.__version__)


class PrefixStore:
    """A folder of :class:`PrefixActs` entries, ``max_bytes`` at most (least recently used removed first).

    ``writable=False`` only reads (distributed ranks other than 0, which compute the same entries).
    """

    def __init__(self, root: str | Path, max_bytes: int, writable: bool = True) -> None:
        self.root = Path(root).expanduser()
        self.max_bytes = int(max_bytes)
        self.writable = writable

    def path(self, key: str) -> Path:
        return self.root / f"prefix-{key}{SUFFIX}"

    def get(self, key: str, n_items: int) -> PrefixActs | None:
        """The entry ``key`` if it exists, is readable and covers ``n_items`` items; a damaged one is removed."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path(key)
        if not path.is_file():
            return None
        checked = self.is_checked(key)
        try:
            t = load_file(str(path))
            acts = PrefixActs(t["dense"], t["indices"], t["labels"], [int(n) for n in t["batch_sizes"].tolist()])
            ok = (len(acts.dense) == n_items and sum(acts.batch_sizes) == len(acts.indices) == len(acts.labels))
        except (OSError, SafetensorError, KeyError, RuntimeError, ValueError) as e:
            log.warning("prefix store: %s is unreadable (%s); computing it again", path, e)
            ok = False
        if not ok:
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recently used: pruned last
        if checked:
            self.mark_checked(key)
        return acts

    def is_checked(self, key: str) -> bool:
        """Whether this process wrote or checked entry ``key`` and the file is unchanged since."""
        try:
            st = self.path(key).stat()
        except OSError:
            return False
        return _CHECKED.get(str(self.path(key))) == (st.st_size, st.st_mtime_ns)

    def mark_checked(self, key: str) -> None:
        st = self.path(key).stat()
        _CHECKED[str(self.path(key))] = (st.st_size, st.st_mtime_ns)

    def put(self, key: str, acts: PrefixActs) -> Path | None:
        """Write ``acts`` as ``key`` (atomically) unless it alone exceeds ``max_bytes``; then prune."""
        from safetensors.torch import save_file

        if not self.writable:
            return None
        if acts.nbytes > self.max_bytes:
            log.info("prefix store: %.1f GB of activations exceed its %.1f GB; not stored", acts.nbytes / 1e9,
                     self.max_bytes / 1e9)
            return None
        path = self.path(key)
        with atomic_path(path) as tmp:
            save_file({"dense": acts.dense.contiguous(), "indices": acts.indices.contiguous(),
                       "labels": acts.labels.contiguous(), "batch_sizes": torch.tensor(acts.batch_sizes)},
                      str(tmp), metadata={"format": str(FORMAT)})
        self.mark_checked(key)
        self.prune(keep=path)
        return path

    def entries(self) -> list[Path]:
        return sorted(self.root.glob(f"prefix-*{SUFFIX}")) if self.root.is_dir() else []

    def prune(self, keep: Path | None = None) -> None:
        """Remove the least recently used entries beyond ``max_bytes`` (never ``keep``) and stale temp files."""
        now = time.time()
        for tmp in self.root.glob(f".prefix-*{SUFFIX}.*.tmp"):
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                    tmp.unlink()
            except OSError:
                pass
        sized = []
        for p in self.entries():
            try:
                st = p.stat()
            except OSError:
                continue
            sized.append((st.st_mtime, st.st_size, p))
        total = sum(s for _, s, _ in sized)
        for _, size, p in sorted(sized, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            p.unlink(missing_ok=True)
            total -= size
            log.info("prefix store: removed %s (least recently used; store over %.1f GB)", p.name,
                     self.max_bytes / 1e9)
