"""OpenClipArt drawings with their titles: the web-like part of the offline retrieval pool (revision 7).

The committed pool of revision 6 (OpenMoji, flags, Tux Paint drawings: 2,488 pairs) is tiny next to the paper's CC3M
and its texts are the benchmark's own. Debian ``openclipart-svg`` (public domain, ~8,100 SVGs) adds drawings of
everything with the title their author typed — noisy, web-like alt text in several languages, as CC3M's. The pool
keeps them all; retrieval filters them by the base's image–text cosine (``RetrieveConfig.pair_floor``), as LAION
filtered its pairs, which is what val chose (docs/RESULTS.md §2, eighteenth session).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from arf.errors import InputFileError

OPENCLIPART_DIR = Path("/usr/share/openclipart/svg")
# A title carried by this many drawings or more names a collection ("gramastar", "Etiquette Icons"), not a picture.
COLLECTION_TITLE = 5
_TITLE = re.compile(r"<dc:title>(.*?)</dc:title>", re.S)
_TEXT = re.compile(r"<(text|flowRoot)\b[^>]*?(/>|>.*?</\1\s*>)", re.S)


@dataclass(frozen=True)
class Drawing:
    rel: str   # path under the OpenClipArt folder
    svg: str
    text: str  # the pair's text: its title, or its file name in words


def svg_title(svg: str) -> str:
    """The drawing's ``dc:title`` with its whitespace collapsed ("" where it has none)."""
    m = _TITLE.search(svg)
    return " ".join(m.group(1).split()) if m else ""


def without_text(svg: str) -> str:
    """``svg`` with its ``<text>`` and ``<flowRoot>`` elements removed. resvg renders without system fonts, so it
    already draws no text; the cairosvg fallback would draw it in whatever fonts the machine has (and 14 drawings then
    rendered differently from one build to the next). Removed, no picture spells its own title either."""
    return _TEXT.sub("", svg)


def stem_words(path: Path) -> str:
    """A file name in words, numbers dropped: ``angry_monkey_benji_park_01.svg`` -> "angry monkey benji park"."""
    return " ".join(w for w in re.split(r"[_\-\s]+", path.stem) if w and not w.isdigit()) or path.stem


def clipart_texts(titles: dict[Path, str]) -> dict[Path, str]:
    """Each drawing's text: its title, or its file name in words where the title is empty or a collection's."""
    count = Counter(titles.values())
    return {p: t if t and count[t] < COLLECTION_TITLE else stem_words(p) for p, t in titles.items()}


def image_rel(rel: str) -> str:
    """Where the benchmark stores a drawing's render: a short stable hash of its path, as the pool's other images."""
    return f"images/pool/openclipart/{hashlib.sha1(rel.encode()).hexdigest()[:16]}.png"


def drawings(folder: Path = OPENCLIPART_DIR) -> list[Drawing]:
    """Every drawing under ``folder`` in path order, with its text."""
    if not folder.is_dir():
        raise InputFileError(f"{folder} is missing; apt-get install openclipart-svg")
    files = sorted(folder.rglob("*.svg"))
    svgs = {f: f.read_text(errors="replace") for f in files}
    texts = clipart_texts({f: svg_title(s) for f, s in svgs.items()})
    return [Drawing(f.relative_to(folder).as_posix(), without_text(svgs[f]), texts[f]) for f in files]
