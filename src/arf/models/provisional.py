"""A clearly *provisional* alignment corpus, used only until the offline benchmark's ``alignment.parquet`` exists.

It renders the iconify ``fluent-emoji-flat`` set (MIT, npm tarball fetched by setup) with texts made from the icon
names. Skin-tone variants are dropped (same concept, same name). The real corpus (``arf data build``) replaces it
as soon as it is there: :func:`arf.models.align.default_corpus` prefers it.
"""

from __future__ import annotations

import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

from arf.errors import InputFileError
from arf.io import atomic_path, write_json
from arf.paths import models_dir, npm_dir

log = logging.getLogger(__name__)

TARBALL_GLOB = "iconify-json-fluent-emoji-flat-*.tgz"
_TONES = ("-light", "-medium-light", "-medium", "-medium-dark", "-dark")
TEMPLATES = ("an emoji of a {}.", "a {}.", "an icon of a {}.", "a picture of a {}.", "a drawing of a {}.")


@dataclass(frozen=True)
class CorpusPair:
    """One image–text pair; ``concept`` (optional) groups pairs of one class for held-out evaluation."""

    path: str
    text: str
    concept: str | None = None


def _tarball(root: Path | None) -> Path:
    root = root or npm_dir()
    found = sorted(root.glob(TARBALL_GLOB))
    if not found:
        raise InputFileError(f"no {TARBALL_GLOB} in {root}; run the setup script (scripts/bootstrap.sh)")
    return found[-1]


def provisional_corpus(size: int = 112, texts_per_image: int = 2, npm_root: Path | None = None,
                       out: Path | None = None) -> list[CorpusPair]:
    """Render (once, cached) and return the provisional pairs: every icon with ``texts_per_image`` templates."""
    import resvg_py
    from PIL import Image

    tgz = _tarball(npm_root)
    out = out or models_dir() / "provisional-corpus" / f"{tgz.stem}-{size}"
    with tarfile.open(tgz) as tf:
        member = tf.extractfile("package/icons.json")
        if member is None:
            raise InputFileError(f"{tgz}: no package/icons.json")
        data = json.load(member)
    w, h = data.get("width", 16), data.get("height", 16)
    names = sorted(n for n in data["icons"] if not n.endswith(_TONES))
    pairs: list[CorpusPair] = []
    for i, name in enumerate(names):
        path = out / f"{name}.png"
        if not path.is_file():
            icon = data["icons"][name]
            svg = (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {icon.get("width", w)} '
                   f'{icon.get("height", h)}">{icon["body"]}</svg>')
            png = bytes(resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size))
            import io

            rgba = Image.open(io.BytesIO(png)).convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.split()[-1])
            with atomic_path(path) as tmp:
                img.save(tmp, format="PNG")
        words = name.replace("-", " ")
        for k in range(texts_per_image):
            pairs.append(CorpusPair(str(path), TEMPLATES[(i + k) % len(TEMPLATES)].format(words), words))
    write_json(out / "info.json", {"source": tgz.name, "license": "MIT", "count": len(names), "provisional": True})
    log.warning("using the PROVISIONAL alignment corpus (%d fluent-emoji-flat icons from %s); run `arf data build` "
                "for the real one", len(names), tgz.name)
    return pairs
