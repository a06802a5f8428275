"""Rendering jobs: turn one source (SVG text, image bytes, or a grey array) into one small PNG on disk.

Every job carries its own seed, so a build is byte-identical whatever the number of worker processes.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from arf.io import atomic_path

log = logging.getLogger(__name__)

# Backgrounds of the finetuning domain: saturated or dark colours, far from the white of the alignment web.
TRAIN_BACKGROUNDS = [
    (20, 24, 48),
    (60, 20, 70),
    (15, 70, 60),
    (110, 30, 30),
    (30, 30, 30),
    (200, 60, 120),
    (40, 120, 200),
    (240, 150, 20),
    (90, 160, 40),
    (120, 90, 60),
]


@dataclass(frozen=True)
class Job:
    rel: str  # output path relative to the benchmark root
    kind: str  # "svg" | "bytes" | "gray" | "text"
    payload: Any  # svg string | encoded image bytes | uint8 array | (font path, text)
    style: str  # "plain" | "jitter" | "train"
    size: int
    seed: int


def job_seed(base: int, rel: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{base}:{rel}".encode()).digest()[:8], "little")


def _svg_rgba(svg: str, size: int) -> Image.Image:
    import resvg_py

    # Width only: resvg keeps the aspect ratio (flags are 4:3), _fit then centres the result.
    try:
        png = resvg_py.svg_to_bytes(svg_string=svg, width=size, skip_system_fonts=True)
    except ValueError:
        # Some drawings carry no usable size for resvg; cairosvg reads those.
        import cairosvg

        png = cairosvg.svg2png(bytestring=svg.encode(), output_width=size)
    return Image.open(io.BytesIO(bytes(png))).convert("RGBA")


def _fit(img: Image.Image, size: int) -> Image.Image:
    """Scale the longer side to ``size`` and centre on a transparent square."""
    img = img.convert("RGBA")
    bbox = img.getbbox()
    if bbox:
        img = img.crop(bbox)
    scale = size / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return canvas


def _text_rgba(font_path: str, text: str, size: int) -> Image.Image:
    font = ImageFont.truetype(font_path, size=int(size * 0.8))
    canvas = Image.new("RGBA", (size * 2, size * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((size // 4, size // 4), text, font=font, fill=(0, 0, 0, 255))
    return _fit(canvas, int(size * 0.8))


def source_rgba(job: Job) -> Image.Image:
    if job.kind == "svg":
        return _fit(_svg_rgba(job.payload, job.size), job.size)
    if job.kind == "bytes":
        with Image.open(io.BytesIO(job.payload)) as im:
            im.load()
            return _fit(im, job.size)
    if job.kind == "gray":
        return Image.fromarray(np.asarray(job.payload, dtype=np.uint8), mode="L").convert("RGBA")
    if job.kind == "text":
        font, text = job.payload
        return _fit(_text_rgba(font, text, job.size), job.size)
    raise ValueError(f"unknown job kind {job.kind!r}")


@dataclass(frozen=True)
class Placement:
    """Where a sticker lands: its side as a fraction of the image and in pixels, rotation in degrees, top-left
    corner."""

    scale: float
    side: int
    angle: float
    x: int
    y: int


def _draw_placement(rng: np.random.Generator, size: int, scale: tuple[float, float], rot: float) -> Placement:
    s = rng.uniform(*scale)
    side = max(8, round(size * s))
    angle = rng.uniform(-rot, rot) if rot else 0.0
    slack = size - side
    x, y = (int(rng.integers(0, slack + 1)), int(rng.integers(0, slack + 1))) if slack > 0 else (0, 0)
    return Placement(s, side, angle, x, y)


def _place(fg: Image.Image, size: int, at: Placement, bg: tuple[int, int, int]) -> Image.Image:
    fg = fg.resize((at.side, at.side), Image.BICUBIC)
    if at.angle:
        fg = fg.rotate(at.angle, resample=Image.BICUBIC, expand=False)
    canvas = Image.new("RGBA", (size, size), (*bg, 255))
    canvas.alpha_composite(fg, (at.x, at.y))
    return canvas.convert("RGB")


@dataclass(frozen=True)
class TrainLook:
    """The random look of one finetuning-domain image (train / val / id); a function of the job's seed alone, so
    an analysis can recover it for any image without rendering (scripts/augment_errors.py)."""

    background: int  # index into TRAIN_BACKGROUNDS
    placement: Placement
    posterize: bool
    mirror: bool


def train_look(seed: int, size: int) -> TrainLook:
    """The draw behind style "train": stickers on coloured backgrounds, rotated, sometimes posterised or mirrored.
    The order of the draws is the build's; changing it changes every finetuning image (bump BUILD_REVISION)."""
    rng = np.random.default_rng(seed)
    bg = int(rng.integers(len(TRAIN_BACKGROUNDS)))
    at = _draw_placement(rng, size, (0.55, 0.9), 35.0)
    return TrainLook(bg, at, bool(rng.random() < 0.5), bool(rng.random() < 0.5))


def styled(job: Job) -> Image.Image:
    fg = source_rgba(job)
    if job.kind == "gray":
        return fg.convert("L")  # MNIST-family: keep the native 28 px grey image
    if job.style == "plain":
        return _place(fg, job.size, _draw_placement(np.random.default_rng(job.seed), job.size, (0.9, 0.9), 0.0),
                      (255, 255, 255))
    if job.style == "jitter":
        return _place(fg, job.size, _draw_placement(np.random.default_rng(job.seed), job.size, (0.7, 0.95), 12.0),
                      (255, 255, 255))
    if job.style == "train":
        look = train_look(job.seed, job.size)
        img = _place(fg, job.size, look.placement, TRAIN_BACKGROUNDS[look.background])
        if look.posterize:
            img = ImageOps.posterize(img, 3)
        if look.mirror:
            img = ImageOps.mirror(img)
        return img
    raise ValueError(f"unknown style {job.style!r}")


def run_job(job: Job, root: str) -> tuple[str, str]:
    """Render ``job`` under ``root``; returns ``(rel, sha256)``, or ``(rel, "")`` for a source that cannot be
    rendered (logged; the builder drops its rows). Deterministic for a given job."""
    try:
        img = styled(job)
    except Exception as e:  # a broken source file must not stop a build of thousands
        log.warning("offline build: cannot render %s (%s: %s); skipped", job.rel, type(e).__name__, e)
        return job.rel, ""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    data = buf.getvalue()
    out = Path(root) / job.rel
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return job.rel, hashlib.sha256(data).hexdigest()


def run_jobs_star(args: tuple[list[Job], str]) -> list[tuple[str, str]]:
    jobs, root = args
    return [run_job(j, root) for j in jobs]
