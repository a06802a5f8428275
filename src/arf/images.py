"""Safe image decoding shared by every stage, and the bad-input counter that enforces a skip threshold.

A corrupt, truncated, empty or absurdly large image is counted and skipped, with its path logged; a stage fails
with one clear message only when the skipped fraction passes ``max_bad_fraction``.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageFile

from arf.errors import ArfError

log = logging.getLogger(__name__)

# Refuse decompression bombs before decoding pixels: 20000 x 20000 would be 1.6 GB as RGBA.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False


class BadImage(ArfError, ValueError):
    """An image that cannot be used; the message names the file and the reason."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # Cut-outs and emoji have transparent backgrounds: composite on white, as a viewer shows them.
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() or 1.0
        return Image.fromarray((arr / hi * 255).astype("uint8")).convert("RGB")
    return img.convert("RGB")


def open_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Decode ``source`` (path or bytes) into an RGB image or raise :class:`BadImage`."""
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        if isinstance(source, bytes):
            if not source:
                raise BadImage(f"{label}: empty file")
            fh: io.BytesIO | Path = io.BytesIO(source)
        else:
            p = Path(source)
            if not p.is_file():
                raise BadImage(f"{label}: file not found")
            if p.stat().st_size == 0:
                raise BadImage(f"{label}: empty file")
            fh = p
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fh) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise BadImage(f"{label}: {w}x{h} exceeds the {MAX_PIXELS}-pixel limit")
                if w < 2 or h < 2:
                    raise BadImage(f"{label}: {w}x{h} is too small to be an image")
                img.load()
                return _to_rgb(img)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"{label}: decompression bomb refused ({e})") from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as e:
        raise BadImage(f"{label}: cannot decode ({type(e).__name__}: {e})") from None


class TooManyBadInputs(ArfError, RuntimeError):
    """More bad inputs than ``max_bad_fraction`` allows."""


@dataclass
class BadInputCounter:
    """Counts good and bad inputs of one stage; thread-safe; raises past ``max_bad_fraction``."""

    stage: str
    max_bad_fraction: float = 0.05
    min_seen: int = 20
    good: int = 0
    bad: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ok(self) -> None:
        with self._lock:
            self.good += 1

    def skip(self, key: str, reason: str) -> None:
        with self._lock:
            self.bad[str(key)] = reason
        log.warning("%s: skipped %s (%s)", self.stage, key, reason)
        self.check(final=False)

    @property
    def seen(self) -> int:
        return self.good + len(self.bad)

    def fraction(self) -> float:
        return len(self.bad) / self.seen if self.seen else 0.0

    def check(self, final: bool = True) -> None:
        if (final or self.seen >= self.min_seen) and self.fraction() > self.max_bad_fraction:
            examples = "; ".join(f"{k}: {v}" for k, v in list(self.bad.items())[:5])
            raise TooManyBadInputs(
                f"{self.stage}: {len(self.bad)} of {self.seen} inputs are bad "
                f"({self.fraction():.1%} > max_bad_fraction={self.max_bad_fraction}); first: {examples}"
            )

    def summary(self) -> str:
        return f"{self.stage}: {self.good} ok, {len(self.bad)} skipped"

    def as_dict(self) -> dict[str, object]:
        return {"stage": self.stage, "ok": self.good, "skipped": len(self.bad), "bad": dict(self.bad)}
