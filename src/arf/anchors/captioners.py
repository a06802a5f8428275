"""Captioners for caption anchors (TCAG), in a registry keyed by the spec's prefix.

- ``hf:<id-or-dir>`` — any Hugging Face image-to-text model (BLIP, BLIP-2 as in the ARF paper, GIT, ...): batched
  ``generate`` with an optional text prompt, which is stripped from the output.
- ``retrieval[:<corpus>]`` — the offline captioner (no captioning weights ship in any package reachable here).
  **Method**: the base CLIP embeds the deduplicated texts of a caption corpus (the alignment corpus or pool texts —
  never test-set texts) and each image. For an image with cosine similarities ``s_j`` to the corpus texts, the
  candidates are the ``top_m`` highest-scoring distinct texts with ``s_j >= s_max - margin``. The caption is the
  best text, followed — after ", " — by the words of each further candidate that are neither already in the
  caption (case- and punctuation-insensitive) nor stop words; a candidate that adds no word is dropped. So the
  caption is the nearest corpus description enriched with the distinct details of its close runners-up.
- ``file:<parquet/csv>`` — captions the user already has (``caption`` plus ``image_id`` or ``path``); bad rows
  and duplicates are handled as described in :class:`FileCaptioner`.

``create_captioner(spec, cfg)`` returns an object with ``id``, ``needs_pixels``, ``prepare(image_ids, paths)``
(checks inputs up front) and ``caption(images, image_ids, paths) -> list[str | None]`` (``None``: no caption for
that image; the stage skips and counts it with ``skip_reason(image_id)``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from arf.anchors.config import CaptionConfig
from arf.errors import ConfigError, InputFileError
from arf.registry import Registry

log = logging.getLogger(__name__)

CAPTIONERS: Registry[Callable[[str | None, CaptionConfig], Captioner]] = Registry("captioner")

STOP_WORDS = frozenset(
    "a an the of with on in and to at for is are its it this that by from as or some two three there".split()
)


class Captioner:
    """Base class: ``caption`` maps a batch of RGB PIL images (or, when ``needs_pixels`` is False, just their ids)
    to one caption each."""

    id: str = ""
    needs_pixels: bool = True

    def prepare(self, image_ids: Sequence[str], paths: Sequence[str]) -> None:
        """Check the inputs before any work (e.g. that every image has a caption in a file)."""

    def caption(self, images: Sequence[Any] | None, image_ids: Sequence[str],
                paths: Sequence[str]) -> list[str | None]:
        """One caption per image; ``None`` for an image the captioner has none for (the stage skips and counts it,
        giving :meth:`skip_reason`)."""
        raise NotImplementedError

    def skip_reason(self, image_id: str) -> str:
        return "the captioner gave no caption"


def create_captioner(spec: str, cfg: CaptionConfig | None = None) -> Captioner:
    cfg = cfg or CaptionConfig(images="-", captioner=spec)
    name, _, arg = spec.partition(":")
    return CAPTIONERS.get(name)(arg or None, cfg)


# --------------------------------------------------------------------------------------------------- hf:<id>
class HFCaptioner(Captioner):
    def __init__(self, name_or_dir: str, prompt: str | None, max_new_tokens: int, device: str) -> None:
        import transformers

        self.id = f"hf:{name_or_dir}"
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.device = device
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(name_or_dir)
        except OSError as e:
            raise InputFileError(f"captioner hf:{name_or_dir}: cannot load its processor ({e})") from None
        self.model = None
        errors = []
        # BLIP / BLIP-2 / LLaVA-style models register as image-text-to-text; GIT registers as a causal LM.
        for auto in ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM"):
            cls = getattr(transformers, auto, None)
            if cls is None:
                continue
            try:
                self.model = cls.from_pretrained(name_or_dir)
                break
            except (ValueError, KeyError) as e:
                errors.append(f"{auto}: {e}")
            except OSError as e:
                raise InputFileError(f"captioner hf:{name_or_dir}: cannot load its weights ({e})") from None
        if self.model is None:
            raise ConfigError(f"captioner hf:{name_or_dir} is not an image-to-text model ({'; '.join(errors)})")
        self.model.to(device).eval()

    def caption(self, images: Sequence[Any] | None, image_ids: Sequence[str], paths: Sequence[str]) -> list[str]:
        import torch

        assert images is not None
        kwargs: dict[str, Any] = {"images": list(images), "return_tensors": "pt"}
        if self.prompt:
            kwargs["text"] = [self.prompt] * len(images)
        inputs = self.processor(**kwargs).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [self._strip_prompt(t) for t in texts]

    def _strip_prompt(self, text: str) -> str:
        text = " ".join(text.split())
        if self.prompt:
            p = " ".join(self.prompt.split())
            if text.lower().startswith(p.lower()):
                text = text[len(p):].strip()
        return text


@CAPTIONERS.register("hf")
def _hf(arg: str | None, cfg: CaptionConfig) -> Captioner:
    if not arg:
        raise ConfigError("captioner: 'hf' needs a model id or folder, e.g. hf:Salesforce/blip-image-captioning-base")
    return HFCaptioner(arg, cfg.prompt, cfg.max_new_tokens, cfg.device)


# --------------------------------------------------------------------------------------------------- retrieval
def read_corpus(path: str | Path) -> list[str]:
    """Distinct texts of a caption corpus: parquet/CSV/TSV (``text``, ``caption`` or ``title`` column) or a .txt
    (one per line)."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"caption corpus not found: {p}")
    if p.suffix == ".txt":
        texts = p.read_text().splitlines()
    else:
        from arf.data.formats import TEXT_COLUMNS, pick_column, read_table

        rows = read_table(p)
        col = pick_column(list(rows[0]) if rows else [], TEXT_COLUMNS)
        if col is None:
            # A labelled set (label/classname, no text) is refused here: test-set texts never become captions.
            have = sorted(rows[0]) if rows else "no rows"
            raise InputFileError(f"caption corpus {p}: needs a text column ({' or '.join(TEXT_COLUMNS)}); "
                                 f"it has {have}")
        texts = [str(r[col]) for r in rows if r[col] is not None]
    seen: set[str] = set()
    out = []
    for t in texts:
        t = " ".join(t.split())
        key = t.lower()
        if t and key not in seen:
            seen.add(key)
            out.append(t)
    if not out:
        raise InputFileError(f"caption corpus {p} holds no texts")
    return out


def default_corpus() -> Path:
    """The offline benchmark's alignment corpus (newest version under ``data_dir()/offline``)."""
    from arf.paths import data_dir

    found = sorted((data_dir() / "offline").glob("*/alignment.parquet"))
    if not found:
        raise ConfigError(
            f"corpus: no caption corpus given and no offline benchmark under {data_dir() / 'offline'}; "
            "run `arf data build` or pass --corpus <parquet/csv/txt> (alignment or pool texts, never test sets)"
        )
    return found[-1]


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'-]+", text)


def compose_caption(candidates: Sequence[str]) -> str:
    """The best text, then the new non-stop words of each runner-up (see the module docstring)."""
    caption = candidates[0]
    seen = {w.lower() for w in _words(caption)}
    for text in candidates[1:]:
        new = []
        for w in _words(text):
            lw = w.lower()
            if lw not in seen and lw not in STOP_WORDS:
                new.append(w)
                seen.add(lw)
        if new:
            caption += ", " + " ".join(new)
    return caption


class RetrievalCaptioner(Captioner):
    def __init__(self, bundle: Any, corpus: Sequence[str], top_m: int = 3, margin: float = 0.05,
                 batch_size: int = 64, corpus_name: str = "corpus", cache_dir: str | Path | None = None) -> None:
        self.bundle = bundle
        self.corpus = list(corpus)
        self.top_m = top_m
        self.margin = margin
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.id = f"retrieval:{corpus_name}@{getattr(bundle, 'model_id', 'model')}"
        self._text_emb: np.ndarray | None = None

    @property
    def text_emb(self) -> np.ndarray:
        """The corpus embeddings, encoded on first use (a run whose captions are cached never needs them) and
        kept in ``cache_dir`` across runs: encoding ~9,000 texts costs ~2 min on 2 CPU cores."""
        if self._text_emb is None:
            from arf.anchors.encode import encode_texts_cached

            self._text_emb = encode_texts_cached(self.bundle, self.corpus, self.cache_dir, batch_size=256)
        return self._text_emb

    @text_emb.setter
    def text_emb(self, emb: np.ndarray) -> None:
        self._text_emb = emb

    def select(self, img_emb: np.ndarray) -> list[list[int]]:
        """Corpus indices composed for each image embedding (unit rows)."""
        sims = img_emb @ self.text_emb.T
        n_cand = min(len(self.corpus), self.top_m)
        top = np.argpartition(-sims, n_cand - 1, axis=1)[:, :n_cand] if n_cand < len(self.corpus) else \
            np.tile(np.arange(len(self.corpus)), (len(sims), 1))
        out = []
        for row, idx in zip(sims, top, strict=True):
            idx = idx[np.argsort(-row[idx], kind="stable")]
            best = row[idx[0]]
            out.append([int(j) for j in idx if row[j] >= best - self.margin])
        return out

    def caption(self, images: Sequence[Any] | None, image_ids: Sequence[str], paths: Sequence[str]) -> list[str]:
        from arf.anchors.encode import encode_pils

        assert images is not None
        emb = encode_pils(self.bundle, images, self.batch_size)
        return [compose_caption([self.corpus[j] for j in sel]) for sel in self.select(emb)]


@CAPTIONERS.register("retrieval")
def _retrieval(arg: str | None, cfg: CaptionConfig) -> Captioner:
    from arf.anchors.encode import load_bundle

    corpus_path = Path(arg or cfg.corpus or default_corpus())
    corpus = read_corpus(corpus_path)
    bundle = load_bundle(cfg.model, cfg.device)
    digest = hashlib.sha256("\n".join(corpus).encode()).hexdigest()[:8]
    log.info("retrieval captioner: %d distinct texts from %s, model %s", len(corpus), corpus_path, cfg.model)
    # Corpus embeddings are kept beside the captions of this run, or in the shared cache for a default output.
    from arf.paths import arf_home

    cache_dir = Path(cfg.out) / "corpus_emb" if cfg.out else arf_home() / "cache" / "corpus_emb"
    return RetrievalCaptioner(bundle, corpus, cfg.top_m, cfg.margin, cfg.batch_size,
                              corpus_name=f"{corpus_path.stem}-{digest}", cache_dir=cache_dir)


# --------------------------------------------------------------------------------------------------- file:<path>
KEY_COLUMNS = ("image_id", "path")


def _cell(value: Any) -> str | None:
    """A captions-file cell as text; ``None`` for text that is not UTF-8, ``""`` for a null."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")   # CSV cells keep undecodable bytes as surrogates (surrogateescape)
        except UnicodeEncodeError:
            return None
        return value
    return "" if value is None else str(value)


Rows = list[tuple[str, dict[str, Any]]]


def _read_rows(p: Path) -> tuple[list[str], Rows, list[tuple[str, str]]]:
    """Column names, ``(where, cells)`` per row and ``(where, problem)`` per malformed CSV line.

    Parquet rows are ``row N`` (from 1, after the header); CSV rows are ``line N`` of the file (the header is line
    1). CSV is read by Python's ``csv`` with undecodable bytes kept as surrogates, so one bad byte or one line
    with the wrong number of fields is one bad row: pyarrow would read a whole column with any invalid UTF-8 as
    binary, turn "001" into 1, and cannot hand over a malformed line that is also not UTF-8.
    """
    try:
        if p.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(p)
            cols = table.column_names
            data = {c: table.column(c).to_pylist() for c in ("caption", *KEY_COLUMNS) if c in cols}
            return cols, [(f"row {i + 1}", {c: v[i] for c, v in data.items()}) for i in range(table.num_rows)], []
        import csv

        rows: Rows = []
        malformed: list[tuple[str, str]] = []
        with open(p, encoding="utf-8", errors="surrogateescape", newline="") as f:
            reader = csv.reader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
            header = next(reader, None)
            if header is None:
                raise InputFileError(f"captions file {p}: empty file")
            cols = [c.strip() for c in header]
            for cells in reader:
                if not cells:
                    continue   # a blank line
                where = f"line {reader.line_num}"
                if len(cells) != len(cols):
                    malformed.append((where, f"{len(cells)} fields, the header has {len(cols)}"))
                else:
                    rows.append((where, dict(zip(cols, cells, strict=True))))
        return cols, rows, malformed
    except InputFileError:
        raise
    except Exception as e:  # pyarrow raises several types for truncated or non-parquet files; csv.Error, OSError
        raise InputFileError(f"captions file {p}: cannot read ({type(e).__name__}: {e})") from None


class FileCaptioner(Captioner):
    """Captions the user already has, from a parquet or CSV file with ``caption`` and ``image_id`` and/or ``path``.

    The file itself must be readable and have those columns, else one :class:`InputFileError` naming the file
    (and the missing column). Bad rows are data problems, skipped and counted (``BadInputCounter``, failing past
    ``max_bad_fraction`` of the rows, naming the first rows): a caption or key that is not UTF-8, a null, empty or
    whitespace-only caption, a row without a key, a CSV line with the wrong number of fields, and a row giving an
    image another caption than an earlier row. **Duplicates, deliberately**: the first usable row of an image wins
    (file order, as in ``arf.data`` manifests and the training captions reader), a later row with the same
    caption is harmless and dropped silently, a later row with another caption is counted as bad. Images left
    without a caption are skipped by the stage like undecodable images (see :meth:`caption`); ``prepare`` fails
    up front when they are more than ``max_bad_fraction`` of the set. Bad rows are named ``line N`` (CSV, the
    header is line 1) or ``row N`` (parquet, from 1).
    """

    needs_pixels = False

    def __init__(self, path: str | Path, max_bad_fraction: float = 0.05) -> None:
        from arf.images import BadInputCounter
        from arf.io import sha256_file

        p = Path(path)
        if not p.is_file():
            raise InputFileError(f"captions file not found: {p}")
        self.path = p
        self.max_bad_fraction = max_bad_fraction
        cols, rows, malformed = _read_rows(p)
        if "caption" not in cols or not set(KEY_COLUMNS) & set(cols):
            missing = "caption" if "caption" not in cols else "image_id' or 'path"
            raise InputFileError(f"captions file {p}: no '{missing}' column; it has {cols} and needs 'caption' "
                                 "and 'image_id' or 'path'")
        # The content hash is part of the id, so a corrected file is never served the captions of the old one.
        self.id = f"file:{p.name}@{sha256_file(p)[:8]}"
        counter = BadInputCounter(f"captions file {p}", max_bad_fraction, total=len(rows) + len(malformed))
        for where, problem in malformed:
            counter.skip(where, problem)
        self.by_key: dict[str, str] = {}
        self.first_row: dict[str, str] = {}
        self.row_problems: dict[str, str] = {}   # key -> why its row was skipped (for images left without caption)
        for where, cells in rows:
            row_keys = [k for k in (_cell(cells[c]) for c in KEY_COLUMNS if c in cells) if k is not None and k.strip()]
            cap = _cell(cells["caption"])
            problem = None
            if not row_keys:
                problem = "no image_id or path (empty or not UTF-8)"
            elif cap is None:
                problem = "column 'caption' is not UTF-8 text"
            elif not cap.strip():
                problem = "empty caption"
            else:
                cap = " ".join(cap.split())
                known = [k for k in row_keys if k in self.by_key]
                clash = next((k for k in known if self.by_key[k] != cap), None)
                if clash is not None:
                    problem = f"gives {clash} another caption than {self.first_row[clash]}, which is kept"
                elif len(known) == len(row_keys):
                    counter.ok()   # an identical repeat: nothing new, nothing wrong
                    continue
            if problem is not None:
                counter.skip(where, problem)
                for k in row_keys:
                    self.row_problems.setdefault(k, f"{where}: {problem}")
                continue
            for k in row_keys:
                self.by_key.setdefault(k, cap)
                self.first_row.setdefault(k, where)
            counter.ok()
        counter.check()
        if counter.n_bad:
            log.warning("%s", counter.summary())
        self.missing: dict[str, str] = {}

    def _lookup(self, image_id: str, path: str) -> str | None:
        return self.by_key.get(image_id) or self.by_key.get(path) or self.by_key.get(str(Path(path).resolve()))

    def prepare(self, image_ids: Sequence[str], paths: Sequence[str]) -> None:
        from arf.images import TooManyBadInputs

        self.missing = {}   # image_id -> why it has no caption
        for i, p in zip(image_ids, paths, strict=True):
            if self._lookup(i, p) is None:
                self.missing[i] = next((self.row_problems[k] for k in (i, p, str(Path(p).resolve()))
                                        if k in self.row_problems), "no row for it")
        if len(self.missing) > self.max_bad_fraction * len(image_ids):   # a wrong file: fail before any work
            raise TooManyBadInputs(
                f"captions file {self.path} has no usable caption for {len(self.missing)} of {len(image_ids)} "
                f"images (more than max_bad_fraction={self.max_bad_fraction}), e.g. "
                + "; ".join(f"{k} ({v})" for k, v in list(self.missing.items())[:5])
            )
        if self.missing:
            log.warning("captions file %s: %d of %d images have no usable caption; they are skipped", self.path,
                        len(self.missing), len(image_ids))

    def caption(self, images: Sequence[Any] | None, image_ids: Sequence[str],
                paths: Sequence[str]) -> list[str | None]:
        return [self._lookup(i, p) for i, p in zip(image_ids, paths, strict=True)]

    def skip_reason(self, image_id: str) -> str:
        return f"no usable caption in {self.path.name} ({self.missing.get(image_id, 'no row for it')})"


@CAPTIONERS.register("file")
def _file(arg: str | None, cfg: CaptionConfig) -> Captioner:
    if not arg:
        raise ConfigError("captioner: 'file' needs a path, e.g. file:captions.parquet")
    return FileCaptioner(arg, cfg.max_bad_fraction)
