"""Torch datasets and loaders that skip bad images instead of crashing a long run.

A bad image becomes ``None`` in ``__getitem__``; the collate drops it, and :class:`arf.images.BadInputCounter`
counts it (path and reason logged) and raises only once more than ``max_bad_fraction`` of inputs were bad.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from arf.images import BadImage, BadInputCounter, open_image

log = logging.getLogger(__name__)

Transform = Callable[[Image.Image], Any]


def crop_border(img: Image.Image, px: int) -> Image.Image:
    """Cut ``px`` pixels from each side (ObjectNet's 1-px border), leaving tiny images untouched."""
    if px <= 0 or img.width <= 2 * px or img.height <= 2 * px:
        return img
    return img.crop((px, px, img.width - px, img.height - px))


class ImageDataset(Dataset):
    """``(image_tensor, label, index)`` per item, or ``None`` for an unreadable image (counted and skipped).

    ``sources`` are paths or raw bytes (webdataset pairs). The counter lives in the parent process when
    ``num_workers=0``; with workers each worker has a copy, so :func:`make_loader` re-checks on the main side.
    """

    def __init__(
        self,
        paths: Sequence[str | bytes],
        labels: Sequence[int] | None = None,
        transform: Transform | None = None,
        counter: BadInputCounter | None = None,
        border_crop: int = 0,
        names: Sequence[str] | None = None,
    ) -> None:
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(paths)} images but {len(labels)} labels")
        self.paths = list(paths)
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        self.transform = transform
        self.counter = counter if counter is not None else BadInputCounter("images")
        self.border_crop = border_crop
        self.names = list(names) if names is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def _name(self, i: int) -> str:
        if self.names is not None:
            return self.names[i]
        src = self.paths[i]
        return f"<bytes #{i}>" if isinstance(src, bytes) else str(src)

    def load(self, i: int) -> Image.Image | None:
        try:
            img = open_image(self.paths[i], name=self._name(i))
        except BadImage as e:
            self.counter.skip(self._name(i), e.reason)
            return None
        self.counter.ok()
        return crop_border(img, self.border_crop)

    def __getitem__(self, i: int) -> tuple[Any, int, int] | None:
        img = self.load(i)
        if img is None:
            return None
        x = self.transform(img) if self.transform is not None else img
        return x, int(self.labels[i]), i

    @classmethod
    def from_set(cls, ds: Any, transform: Transform | None = None, counter: BadInputCounter | None = None):
        """Build from a :class:`arf.data.LabeledSet`."""
        return cls(
            ds.abspaths(),
            ds.labels,
            transform,
            counter or BadInputCounter(f"images:{ds.name}"),
            border_crop=getattr(ds, "border_crop", 0),
        )


def skip_collate(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Stack ``(x, label, index)`` items, dropping ``None`` (skipped) ones; an all-bad batch becomes ``None``."""
    items = [b for b in batch if b is not None]
    if not items:
        return None
    xs, ys, idx = zip(*items, strict=True)
    return torch.stack(list(xs)), torch.tensor(ys, dtype=torch.long), torch.tensor(idx, dtype=torch.long)


class _CheckedLoader:
    """Iterates a DataLoader, skips empty batches and enforces the bad-input fraction at the end."""

    def __init__(self, loader: DataLoader, counter: BadInputCounter) -> None:
        self.loader = loader
        self.counter = counter
        self.dataset = loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        n_items = 0
        for batch in self.loader:
            if batch is None:
                continue
            n_items += len(batch[1])
            yield batch
        # Workers keep their own counter copies: reconcile from what actually arrived in this process.
        if self.loader.num_workers > 0 and not self.loader.drop_last:
            missing = len(self.loader.dataset) - n_items
            self.counter.good = n_items
            for j in range(len(self.counter.bad), missing):
                self.counter.bad[f"<item skipped in a worker #{j}>"] = "see the worker's log line for the path"
        self.counter.check(final=True)
        log.debug(self.counter.summary())


def make_loader(
    dataset: ImageDataset,
    batch_size: int = 64,
    shuffle: bool = False,
    num_workers: int = 0,
    drop_last: bool = False,
    seed: int = 0,
) -> _CheckedLoader:
    """A DataLoader over ``dataset`` whose batches are ``(images, labels, indices)`` with bad images dropped."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=skip_collate,
        generator=gen,
        persistent_workers=False,
    )
    return _CheckedLoader(loader, dataset.counter)
