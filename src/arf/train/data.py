"""Batch sources for training: finetuning images with labels (and captions), and retrieved anchors.

Every batch is a pure function of ``(seed, step, micro-step, rank)``: epoch ``e`` visits the finetuning set in
the permutation seeded by ``(seed, e)``, the anchor stream runs through its own permutations at its own batch
size, and a random augmentation is seeded per image by ``(seed, epoch, index)``. So the data position of a run
is its step alone, a resumed run sees exactly the batches the uninterrupted one saw (whatever ``num_workers``),
and the global batch does not depend on how many processes share it (rank ``r`` takes its slice).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from arf.data import ImageDataset, LabeledSet
from arf.errors import ConfigError, InputFileError
from arf.images import BadInputCounter
from arf.train.config import TrainConfig, anchor_parquet

log = logging.getLogger(__name__)

# (source "f" finetune | "l" its label only | "a" anchor | "i" anchor index only, index, augmentation seed); the
# index-only sources serve steps whose frozen-prefix activations are cached (no image is decoded).
Key = tuple[str, int, int]


def permutation(n: int, seed: int, epoch: int, stream: int = 0) -> np.ndarray:
    return np.random.default_rng([seed, stream, epoch]).permutation(n)


def item_seed(seed: int, stream: int, epoch: int, index: int) -> int:
    return int(np.random.default_rng([seed, stream, epoch, index]).integers(2**62))


@dataclass
class Anchors:
    """Retrieved anchors: image paths (absolute) and their texts."""

    paths: list[str]
    texts: list[str]
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.paths)


def read_captions(path: str | Path, ds: LabeledSet, max_bad_fraction: float = 0.05) -> list[str | None]:
    """Captions aligned with ``ds`` (``None`` for an image without one), matched on ``image_id`` or ``path``.

    Rows whose caption is empty or not UTF-8, and repeats of an image with a different caption, are skipped and
    counted (the first caption of an image is kept); past ``max_bad_fraction`` of the rows it is an error.
    """
    import pyarrow.parquet as pq

    p = Path(path).expanduser()
    if not p.is_file():
        raise InputFileError(f"captions file not found: {p}")
    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for truncated or non-parquet files
        raise InputFileError(f"captions file {p}: cannot read ({type(e).__name__}: {e})") from None
    missing = {"image_id", "caption"} - set(table.column_names)
    if missing:
        raise InputFileError(f"{p}: not a captions parquet (missing column {sorted(missing)[0]!r})")
    ids = table.column("image_id").to_pylist()
    caps = table.column("caption").to_pylist()
    paths = table.column("path").to_pylist() if "path" in table.column_names else [None] * len(ids)
    counter = BadInputCounter(f"captions {p}", max_bad_fraction=max_bad_fraction, total=len(ids))
    by_id: dict[str, str] = {}
    for row, (i, pth, c) in enumerate(zip(ids, paths, caps, strict=True), start=1):
        if isinstance(c, bytes):  # a binary column: a writer that did not check its text
            try:
                c = c.decode("utf-8")
            except UnicodeDecodeError:
                counter.skip(f"row {row}", "caption is not UTF-8 text")
                continue
        if c is None or not str(c).strip():
            counter.skip(f"row {row}", "empty caption")
            continue
        c = str(c)
        keys = [str(i)] + ([str(Path(pth))] if pth else [])
        if any(k in by_id for k in keys):
            if by_id.get(keys[0], c) != c:
                counter.skip(f"row {row}", f"a second, different caption for {i}; the first is kept")
            continue  # an identical repeat is harmless
        for k in keys:
            by_id[k] = c
        counter.ok()
    counter.check()
    if counter.n_bad:
        log.warning("%s", counter.summary())
    out: list[str | None] = []
    for i in range(len(ds)):
        out.append(by_id.get(ds.paths[i]) or by_id.get(str(Path(ds.abspath(i)))))
    n = sum(c is not None for c in out)
    if n == 0:
        raise InputFileError(f"{p}: no caption matches an image of the set {ds.name!r} (image_id must be the path "
                             "relative to the set root); were the captions made for another set?")
    if n < len(ds):
        log.warning("captions: %d of %d images of %s have no caption; they get no caption loss", len(ds) - n,
                    len(ds), ds.name)
    return out


def read_anchor_meta(path: str | Path) -> dict[str, Any]:
    import json

    p = anchor_parquet(path)
    side = p.with_name("anchors.json") if p.with_name("anchors.json").is_file() else p.with_suffix(".json")
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise InputFileError(f"anchor sidecar {side} is unreadable: {e}") from None


def read_anchors(path: str | Path, root: str | Path | None) -> Anchors:
    """The anchor parquet (``pool_id, path, text, score, query_class``); relative paths resolve under ``root``."""
    import pyarrow.parquet as pq

    p = anchor_parquet(path)
    table = pq.read_table(p)
    missing = {"path", "text"} - set(table.column_names)
    if missing:
        raise InputFileError(f"{p}: not an anchor parquet (missing column {sorted(missing)[0]!r})")
    base = Path(root).expanduser() if root is not None else p.parent
    paths = [str(q if Path(q).is_absolute() else base / q) for q in table.column("path").to_pylist()]
    texts = [str(t) for t in table.column("text").to_pylist()]
    if not paths:
        raise InputFileError(f"{p}: the anchor set is empty")
    first = paths[0].split("#", 1)[0] if _is_tar_ref(paths[0]) else paths[0]
    if not Path(first).is_file():
        raise InputFileError(f"anchor image {paths[0]} not found; set anchor_root to the folder the anchor paths "
                             "are relative to")
    return Anchors(paths, texts, read_anchor_meta(path))


def _is_tar_ref(ref: str) -> bool:
    return "#" in ref and ref.split("#", 1)[0].endswith(".tar")


class AnchorImages(ImageDataset):
    """Anchor images: files, or ``<shard>.tar#<key>`` refs of a webdataset pool (as ``arf pool embed`` records)."""

    def load(self, i: int) -> Any:
        ref = self.paths[i]
        if isinstance(ref, str) and _is_tar_ref(ref):
            from arf.anchors.pool import open_pool_image
            from arf.images import BadImage

            try:
                img = open_pool_image(ref)
            except BadImage as e:
                self.counter.skip(ref, e.reason)
                return None
            self.counter.ok()
            return img
        return super().load(i)


class StepDataset(Dataset):
    """Loads one key: a finetuning image (with label) or an anchor image; ``None`` for a bad image."""

    def __init__(self, ds: LabeledSet, transform: Callable[[Any], torch.Tensor], augment: bool,
                 anchors: Anchors | None, counter: BadInputCounter) -> None:
        self.images = ImageDataset.from_set(ds, None, counter)
        self.anchor_images = AnchorImages(anchors.paths, None, None, counter) if anchors is not None else None
        self.transform = transform
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: Key) -> tuple[str, torch.Tensor | None, int, int] | None:
        src, i, salt = key
        if src == "l":  # label only: the image features are cached
            return src, None, int(self.images.labels[i]), i
        if src == "i":  # anchor index only: its frozen-prefix activations are cached
            return src, None, -1, i
        data = self.images if src == "f" else self.anchor_images
        assert data is not None
        img = data.load(i)
        if img is None:
            return None
        if self.augment:
            # Seeded per image so the augmentation does not depend on worker count or on resuming.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(salt)
                x = self.transform(img)
        else:
            x = self.transform(img)
        return src, x, int(data.labels[i]), i


def collate(items: list[Any]) -> dict[str, torch.Tensor]:
    out: dict[str, list[Any]] = {"f": [], "a": [], "l": [], "i": []}
    for it in items:
        if it is not None:
            out[it[0]].append(it)
    batch: dict[str, torch.Tensor] = {}
    f = out["f"] or out["l"]
    if f:
        if out["f"]:
            batch["images"] = torch.stack([it[1] for it in f])
        batch["labels"] = torch.tensor([it[2] for it in f], dtype=torch.long)
        batch["indices"] = torch.tensor([it[3] for it in f], dtype=torch.long)
    else:
        batch["labels"] = torch.zeros(0, dtype=torch.long)
        batch["indices"] = torch.zeros(0, dtype=torch.long)
    if out["a"]:
        batch["anchor_images"] = torch.stack([it[1] for it in out["a"]])
    if out["a"] or out["i"]:
        batch["anchor_indices"] = torch.tensor([it[3] for it in out["a"] or out["i"]], dtype=torch.long)
    return batch


class StepSampler:
    """Yields, for each (step, micro-step) from ``start_step``, this rank's keys. A plain iterable of lists."""

    def __init__(self, cfg: TrainConfig, n_train: int, n_anchors: int, rank: int, world: int, start_step: int,
                 total_steps: int, mode: Callable[[int], tuple[bool, str | None]]) -> None:
        self.cfg = cfg
        self.n, self.na = n_train, n_anchors
        self.rank, self.world = rank, world
        self.start, self.total = start_step, total_steps
        # mode(step) -> (load finetuning pixels, anchors: "a" pixels | "i" indices only | None)
        self.mode = mode
        self.micro = cfg.batch_size // cfg.accum_steps
        self.anchor_micro = cfg.anchor_batch_size // cfg.accum_steps
        self.steps_per_epoch = max(1, n_train // cfg.batch_size)
        self._perm: tuple[int, np.ndarray] | None = None
        self._aperm: dict[int, np.ndarray] = {}

    def _epoch_perm(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, permutation(self.n, self.cfg.seed, epoch))
        return self._perm[1]

    def _anchor_cycle(self, c: int) -> np.ndarray:
        if c not in self._aperm:
            self._aperm = {c: permutation(self.na, self.cfg.seed, c, stream=1)}
        return self._aperm[c]

    def rank_slice(self, items: Sequence[Any]) -> list[Any]:
        per = len(items) // self.world
        return list(items[self.rank * per:(self.rank + 1) * per])

    def keys(self, step: int, micro: int) -> list[Key]:
        pixels, anchors = self.mode(step)
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = self._epoch_perm(epoch)
        start = k * self.cfg.batch_size + micro * self.micro
        idx = self.rank_slice(perm[start:start + self.micro])
        src = "f" if pixels else "l"
        keys: list[Key] = [(src, int(i), item_seed(self.cfg.seed, 0, epoch, int(i)) if pixels else 0) for i in idx]
        if anchors and self.na:
            pos = (step * self.cfg.accum_steps + micro) * self.anchor_micro
            chosen: list[tuple[int, int]] = []
            while len(chosen) < self.anchor_micro:
                c, off = divmod(pos + len(chosen), self.na)
                take = self._anchor_cycle(c)[off:off + self.anchor_micro - len(chosen)]
                chosen += [(int(a), c) for a in take]
            keys += [(anchors, a, item_seed(self.cfg.seed, 1, c, a)) for a, c in self.rank_slice(chosen)]
        return keys

    def __iter__(self) -> Iterator[list[Key]]:
        for step in range(self.start, self.total):
            for micro in range(self.cfg.accum_steps):
                yield self.keys(step, micro)

    def __len__(self) -> int:
        return (self.total - self.start) * self.cfg.accum_steps


def make_step_loader(dataset: StepDataset, sampler: StepSampler, num_workers: int) -> DataLoader:
    # A fixed generator: creating the loader must not draw from (and so shift) the global torch RNG on resume.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      persistent_workers=False, generator=torch.Generator().manual_seed(sampler.cfg.seed))


def check_sizes(cfg: TrainConfig, n_anchors: int, world: int) -> None:
    if cfg.lambda_ret > 0:
        am = cfg.anchor_batch_size // cfg.accum_steps
        if cfg.anchor_batch_size % cfg.accum_steps or am % world:
            raise ConfigError(f"anchor_batch_size: {cfg.anchor_batch_size} must split evenly over accum_steps="
                              f"{cfg.accum_steps} and {world} processes")
        if cfg.anchor_batch_size > n_anchors:
            raise ConfigError(f"anchor_batch_size: {cfg.anchor_batch_size} is larger than the anchor set "
                              f"({n_anchors} anchors)")
