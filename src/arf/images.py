"""Safe image decoding shared by every stage, and the bad-input counter that enforces a skip threshold.

A corrupt, truncated, empty or absurdly large image is counted and skipped, with its path logged; a stage fails
with one clear message only when the skipped fraction passes ``max_bad_fraction``.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageFile

from arf.errors import ArfError

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

log = logging.getLogger(__name__)

# Refuse decompression bombs before decoding pixels: 20000 x 20000 would be 1.6 GB as RGBA.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False


class BadImage(ArfError, ValueError):
    """An image that cannot be used. ``str(e)`` names the file and the reason; ``e.reason`` is the reason alone,
    for counters that print the file themselves (a bare message is its own reason)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message

    @classmethod
    def at(cls, label: str, reason: str) -> BadImage:
        """``"<label>: <reason>"``, with ``reason`` kept apart."""
        return cls(f"{label}: {reason}", reason)


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _SIXTEEN_BIT or img.mode == "I":
        # 16/32-bit greyscale: Pillow's convert("L") clips everything above 255 to white, so rescale by the bit
        # depth (65535 -> 255) rather than by the image's own maximum, which would brighten a dark image.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 0.0
        if img.mode in _SIXTEEN_BIT or 255 < hi <= 65535:
            scale = 65535.0
        elif hi <= 255:
            scale = 255.0  # an "I" image holding 8-bit values (some TIFF/PNG writers)
        else:
            scale = hi
        out = np.clip(np.nan_to_num(arr / scale * 255.0), 0, 255).round().astype("uint8")
        return Image.fromarray(out, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        # Cut-outs and emoji have transparent backgrounds: composite on white, as a viewer shows them.
        # "transparency" covers palette PNG/GIF and RGB/L PNG with a tRNS colour key.
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img.convert("RGB")


def open_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Decode ``source`` (path or bytes) into an RGB image or raise :class:`BadImage`."""
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        if isinstance(source, bytes):
            if not source:
                raise BadImage.at(label, "empty file")
            fh: io.BytesIO | Path = io.BytesIO(source)
        else:
            p = Path(source)
            if not p.is_file():
                raise BadImage.at(label, "file not found")
            if p.stat().st_size == 0:
                raise BadImage.at(label, "empty file")
            fh = p
        # Pillow raises DecompressionBombError in open() past 2 x MAX_IMAGE_PIXELS and only warns between 1x and
        # 2x; the explicit size check below refuses both from the header, before a single pixel is decoded.
        # (No warnings.catch_warnings here: it is not thread-safe and decoding runs in loader threads.)
        with Image.open(fh) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise BadImage.at(label, f"{w}x{h} exceeds the {MAX_PIXELS}-pixel limit (decompression bomb?)")
            if w < 2 or h < 2:
                raise BadImage.at(label, f"{w}x{h} is too small to be an image")
            img.load()
            return _to_rgb(img)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage.at(label, f"decompression bomb refused ({e})") from None
    except MemoryError:
        raise BadImage.at(label, "out of memory while decoding") from None
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, EOFError, Image.UnidentifiedImageError) as e:
        # Pillow's plugins raise any of these on malformed headers or chunks; all mean "this file is unusable".
        # Pillow names in-memory sources "<_io.BytesIO object at 0x7f…>": the address differs per process, and
        # skip reasons end up in outputs that a resumed run must reproduce byte for byte (pool shard markers).
        reason = _ADDRESS.sub("", str(e))
        if not isinstance(source, bytes):
            reason = reason.replace(f" {str(source)!r}", "")  # "cannot identify image file '<path>'": named already
        raise BadImage.at(label, f"cannot decode ({type(e).__name__}: {reason})") from None


class TooManyBadInputs(ArfError, RuntimeError):
    """More bad inputs than ``max_bad_fraction`` allows."""


@dataclass
class BadInputCounter:
    """Counts good and bad inputs of one stage; thread-safe; raises past ``max_bad_fraction``.

    The stage fails only when the bad fraction *of everything it saw* passes ``max_bad_fraction``: ``check()``
    at the end is exact. While running, ``skip()`` stops early only when the outcome is already certain (``total``
    known and more than ``max_bad_fraction * total`` inputs bad) or, without ``total``, when at least ``min_seen``
    inputs were seen and more than half of them were bad (a wrong root or a broken shard), so a run of bad files
    early in a big, mostly good dataset never kills hours of work.
    """

    stage: str
    max_bad_fraction: float = 0.05
    min_seen: int = 20
    good: int = 0
    bad: dict[str, str] = field(default_factory=dict)
    total: int | None = None  # inputs the stage will see, when known: lets it stop as soon as failure is certain
    n_bad: int = 0  # skips counted (a key skipped twice, e.g. a duplicate row, counts twice; ``bad`` keeps one)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ArfError(f"max_bad_fraction: {self.max_bad_fraction!r} must be between 0 and 1")

    def ok(self) -> None:
        with self._lock:
            self.good += 1

    def skip(self, key: str, reason: str) -> None:
        with self._lock:
            self.bad[str(key)] = reason
            self.n_bad += 1
        log.warning("%s: skipped %s (%s)", self.stage, key, reason)
        self.check(final=False)

    @property
    def seen(self) -> int:
        return self.good + self.n_bad

    def fraction(self) -> float:
        return self.n_bad / self.seen if self.seen else 0.0

    def _failed(self, final: bool) -> bool:
        if final:
            return self.fraction() > self.max_bad_fraction
        if self.total is not None:
            return self.n_bad > self.max_bad_fraction * self.total
        return self.seen >= self.min_seen and self.fraction() > max(self.max_bad_fraction, 0.5)

    def check(self, final: bool = True) -> None:
        if self._failed(final):
            examples = "; ".join(f"{k}: {v}" for k, v in list(self.bad.items())[:5])
            of = f"{self.seen}" if final or self.total is None else f"{self.seen} seen (of {self.total})"
            raise TooManyBadInputs(
                f"{self.stage}: {self.n_bad} of {of} inputs are bad "
                f"({self.fraction():.1%} > max_bad_fraction={self.max_bad_fraction}); first: {examples}"
            )

    def summary(self) -> str:
        return f"{self.stage}: {self.good} ok, {self.n_bad} skipped"

    def as_dict(self) -> dict[str, object]:
        return {"stage": self.stage, "ok": self.good, "skipped": self.n_bad, "bad": dict(self.bad)}
