"""Dataset formats users bring: class folders, CSV/parquet manifests, webdataset shards; and the set records.

A :class:`LabeledSet` is the one thing evaluation and training consume: a label space (``classnames``), prompt
templates, and ``paths``/``labels``. Readers here never decode images (that happens lazily in the loader, which
skips bad files); they only resolve and validate paths, so a manifest that points outside its root fails early
with the manifest and row named.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arf.errors import ArfError, ConfigError, InputFileError

log = logging.getLogger(__name__)

# In display order. ``val-shift`` / ``val-zeroshot``: sets to choose settings on for domain-shift / zero-shot
# retention (the offline benchmark's are ``arf.data.offline.val_splits``); never averaged into the test columns.
ROLES = ("train", "val", "val-shift", "val-zeroshot", "id", "shift", "zeroshot")
# Evaluated unless asked otherwise: the finetuning set itself says little about robustness.
EVAL_ROLES = ROLES[1:]
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".jfif")


class ManifestError(ArfError, ValueError):
    """A manifest row that cannot be used (escaping path, unknown label, missing column)."""


@dataclass
class LabeledSet:
    """One evaluation or training set; ``labels[i]`` indexes ``classnames`` for image ``paths[i]``."""

    name: str
    role: str
    classnames: list[str]
    templates: list[str]
    paths: list[str]
    labels: list[int]
    root: str | None = None
    class_mask: list[int] | None = None
    label_map: dict[int, list[int]] | None = None
    reference: str | None = None
    # Pixels to cut from each side before preprocessing (ObjectNet ships a 1-px red border).
    border_crop: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"set {self.name!r}: unknown role {self.role!r}; choose from {', '.join(ROLES)}")
        if len(self.paths) != len(self.labels):
            raise ConfigError(f"set {self.name!r}: {len(self.paths)} paths but {len(self.labels)} labels")
        n = len(self.classnames)
        bad = [lab for lab in self.labels if not 0 <= int(lab) < n]
        if bad:
            raise ConfigError(f"set {self.name!r}: label {bad[0]} out of range for {n} classnames")
        if not self.templates:
            raise ConfigError(f"set {self.name!r}: no prompt templates")
        for t in self.templates:
            if "{}" not in t and "{c}" not in t:
                raise ConfigError(f"set {self.name!r}: template {t!r} has no '{{}}' placeholder for the class name")
        if self.class_mask is not None and len(self.class_mask) != n:
            raise ConfigError(
                f"set {self.name!r}: class_mask has {len(self.class_mask)} entries but the set has {n} classes"
            )
        if self.label_map is not None:
            missing = sorted(set(range(n)) - set(self.label_map))
            if missing:
                raise ConfigError(f"set {self.name!r}: label_map has no entry for class {missing[0]}")

    def __len__(self) -> int:
        return len(self.paths)

    def abspath(self, i: int) -> str:
        p = Path(self.paths[i])
        return str(p if p.is_absolute() or self.root is None else Path(self.root) / p)

    def abspaths(self) -> list[str]:
        return [self.abspath(i) for i in range(len(self))]

    def prompts(self, classname: str) -> list[str]:
        return [t.replace("{c}", "{}").format(classname) for t in self.templates]

    def class_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.classnames, 0)
        for lab in self.labels:
            counts[self.classnames[lab]] += 1
        return counts

    def to_set_logits(self, logits: Any) -> Any:
        """Map logits over the reference label space to this set's classes (torch or numpy, ``[N, C_ref]``).

        ``class_mask``: the reference columns of this set's classes, in order (ImageNet-A/-R). ``label_map``:
        a set class scores the best of its reference classes (ObjectNet). Neither: logits are already the
        set's own.
        """
        if self.class_mask is not None:
            return logits[:, list(self.class_mask)]
        if self.label_map is not None:
            cols = [logits[:, list(self.label_map[c])] for c in range(len(self.classnames))]
            if hasattr(logits, "detach"):
                import torch

                return torch.stack([c.max(1).values for c in cols], 1)
            import numpy as np

            return np.stack([c.max(1) for c in cols], 1)
        return logits

    def subset(self, indices: Sequence[int], name: str | None = None) -> LabeledSet:
        return LabeledSet(
            name=name or self.name,
            role=self.role,
            classnames=self.classnames,
            templates=self.templates,
            paths=[self.paths[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            root=self.root,
            class_mask=self.class_mask,
            label_map=self.label_map,
            reference=self.reference,
            border_crop=self.border_crop,
            info=dict(self.info),
        )


@dataclass
class Suite:
    """A named list of sets (e.g. ``imagenet-shift``); ``by_role`` groups them for reporting."""

    name: str
    sets: list[LabeledSet]
    info: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[LabeledSet]:
        return iter(self.sets)

    def __len__(self) -> int:
        return len(self.sets)

    def names(self) -> list[str]:
        return [s.name for s in self.sets]

    def get(self, name: str) -> LabeledSet:
        for s in self.sets:
            if s.name == name:
                return s
        raise ConfigError(f"suite {self.name!r} has no set {name!r}; choose from {', '.join(self.names())}")

    def select(self, names: list[str], field: str = "sets") -> dict[str, LabeledSet]:
        """The sets ``names`` by name; an unknown one is a :class:`ConfigError` for ``field`` (the flag or config
        key the names came from) with the suite's choices."""
        try:
            return {n: self.get(n) for n in names}
        except ConfigError as e:
            raise ConfigError(f"{field}: {e}") from None

    def by_role(self, role: str) -> list[LabeledSet]:
        return [s for s in self.sets if s.role == role]


# ---------------------------------------------------------------------------------------------------------------
# paths


def safe_join(root: str | Path, rel: str, where: str) -> Path:
    """Resolve manifest path ``rel`` under ``root``; refuse anything that escapes it (``../``, foreign absolutes).

    ``where`` names the manifest and row for the error message.
    """
    root_r = Path(root).resolve()
    try:
        p = Path(rel)
        full = (p if p.is_absolute() else root_r / p).resolve()
    except (ValueError, OSError, RuntimeError) as e:  # a NUL byte; a symlink loop (RuntimeError before 3.13)
        raise ManifestError(f"{where}: path {rel!r} is not a usable file name ({e})") from None
    if full != root_r and root_r not in full.parents:
        raise ManifestError(f"{where}: path {rel!r} escapes the dataset root {root_r}")
    return full


# ---------------------------------------------------------------------------------------------------------------
# labelled data: class folders and manifests


def class_folder_names(root: str | Path) -> list[str]:
    """The class folders under ``root`` in label order: sorted, numerically when every name is digits."""
    root = Path(root)
    if not root.is_dir():
        raise InputFileError(f"dataset folder {root} does not exist")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if found and all(f.isdigit() for f in found):
        found.sort(key=int)  # "1".."102" (Flowers102, ImageNetV2): numeric order, not "1", "10", "100"
    return found


def folder_classname(folder: str) -> str:
    """A class name from its folder's name ("Black_footed_Albatross" -> "black footed albatross")."""
    return folder.replace("_", " ").strip().lower()


def read_class_folders(
    root: str | Path, classnames: Sequence[str] | None = None, folders: Sequence[str] | None = None
) -> tuple[list[str], list[int], list[str]]:
    """Read ``root/<class>/<image>``; returns ``(paths relative to root, labels, folder names)``.

    ``folders`` fixes the folder order (and so the label indices, e.g. ImageNet wnids); otherwise sorted names.
    An empty class folder is logged and kept (it has no images); a folder list whose length does not match
    ``classnames`` is an error naming both counts.
    """
    root = Path(root)
    found = class_folder_names(root)
    if folders is None:
        folders = found
    else:
        missing = [f for f in folders if f not in set(found)]
        if missing and len(missing) == len(folders):
            raise InputFileError(f"{root}: none of the expected class folders exist (e.g. {missing[0]!r})")
        if missing:
            log.warning("%s: %d expected class folders are missing, e.g. %s", root, len(missing), missing[:3])
    if classnames is not None and len(classnames) != len(folders):
        raise ConfigError(
            f"{root}: {len(folders)} class folders but {len(classnames)} class names; "
            "the class-name file does not match this dataset"
        )
    if not folders:
        raise InputFileError(f"{root}: no class folders found")
    paths: list[str] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        d = root / folder
        if not d.is_dir():
            continue
        files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        if not files:
            log.warning("%s: class folder %r is empty", root, folder)
        for f in files:
            paths.append(f.relative_to(root).as_posix())
            labels.append(label)
    if not paths:
        raise InputFileError(f"{root}: class folders hold no images")
    return paths, labels, list(folders)


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV or parquet file as dicts (pyarrow reads both)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"manifest {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif suffix in (".csv", ".tsv"):
            import pyarrow as pa
            import pyarrow.csv as pacsv

            opts = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            # Cells stay text: left to inference, a path or label "001" would become the number 1 (and a column
            # of numbers with one word further down would fail). Columns inferred as binary (invalid UTF-8 in
            # the first block) stay binary, so those rows are counted and skipped rather than failing the file.
            with pacsv.open_csv(path, parse_options=opts) as reader:
                inferred = reader.schema
            types = {f.name: pa.string() for f in inferred if not pa.types.is_binary(f.type)}
            conv = pacsv.ConvertOptions(strings_can_be_null=False, column_types=types)
            table = pacsv.read_csv(path, parse_options=opts, convert_options=conv)
        else:
            raise InputFileError(f"manifest {path}: unsupported format {suffix!r}; use .csv, .tsv or .parquet")
        # Inside the try: a header that is not UTF-8 fails only here, when pyarrow decodes the column names.
        rows = table.to_pylist()
    except ArfError:
        raise
    except Exception as e:  # pyarrow raises several types for malformed files
        raise InputFileError(f"manifest {path}: cannot read ({type(e).__name__}: {e})") from None
    return rows


# Rows that cannot be used (undecodable text, empty fields, duplicates) are skipped and counted; a manifest
# fails only when more than this fraction of its rows is bad, so one stray byte never kills a big job.
MAX_BAD_ROWS = 0.05


def _cell_text(value: Any) -> str | None:
    """A manifest cell as text; ``None`` for bytes that are not UTF-8.

    pyarrow reads a CSV column holding any invalid UTF-8 as *binary*, so every cell of it arrives as bytes;
    ``str(b"a.png")`` would silently become ``"b'a.png'"``.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return "" if value is None else str(value)


def _row_counter(manifest: Path, n_rows: int, max_bad_fraction: float) -> Any:
    from arf.images import BadInputCounter

    return BadInputCounter(f"manifest {manifest}", max_bad_fraction=max_bad_fraction, total=n_rows)


def read_label_manifest(
    manifest: str | Path,
    classnames: Sequence[str],
    root: str | Path | None = None,
    max_bad_fraction: float = MAX_BAD_ROWS,
) -> tuple[list[str], list[int]]:
    """A ``path,label`` manifest; ``label`` is a class name or an integer index into ``classnames``.

    Unknown labels and escaping paths fail naming the manifest and row (1-based, header excluded): they mean
    the wrong class list or a hostile file. Rows with non-UTF-8 or empty fields and repeated paths are skipped
    and counted; more than ``max_bad_fraction`` of them is an error naming the first few.
    """
    manifest = Path(manifest)
    root = Path(root) if root is not None else manifest.parent
    rows = read_table(manifest)
    if rows and not {"path", "label"} <= set(rows[0]):
        raise ManifestError(f"manifest {manifest}: needs columns 'path' and 'label', has {sorted(rows[0])}")
    index = {c: i for i, c in enumerate(classnames)}
    counter = _row_counter(manifest, len(rows), max_bad_fraction)
    paths, labels = [], []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows, start=1):
        where = f"manifest {manifest} row {i}"
        rel, lab = _cell_text(row["path"]), row["label"]
        if isinstance(lab, (bytes, bytearray, memoryview, type(None))):
            lab = _cell_text(lab)
        if rel is None or lab is None:
            counter.skip(f"row {i}", "not UTF-8 text")
            continue
        if not rel.strip() or (isinstance(lab, str) and not lab.strip()):
            counter.skip(f"row {i}", "empty path or label")
            continue
        full = safe_join(root, rel, where)
        if isinstance(lab, str) and lab in index:
            label = index[lab]
        else:
            try:
                label = int(lab)
            except (TypeError, ValueError):
                raise ManifestError(
                    f"{where}: unknown label {lab!r} (not one of the {len(classnames)} classes)"
                ) from None
            if not 0 <= label < len(classnames):
                raise ManifestError(f"{where}: label {label} out of range for {len(classnames)} classes")
        key = full.relative_to(root.resolve()).as_posix()
        if key in seen:
            same = labels[seen[key]] == label
            counter.skip(f"row {i}", f"repeats {key}" + ("" if same else " with another label; the first is kept"))
            continue
        seen[key] = len(paths)
        paths.append(key)
        labels.append(label)
        counter.ok()
    counter.check()
    if counter.n_bad:
        log.warning("%s", counter.summary())
    if not paths:
        raise InputFileError(f"manifest {manifest} has no rows")
    return paths, labels


# ---------------------------------------------------------------------------------------------------------------
# image-text pairs (alignment corpus, candidate pools)


@dataclass
class Pair:
    """One image–text pair. Exactly one of ``path`` / ``image`` is set; ``id`` is stable across runs."""

    id: str
    text: str
    path: str | None = None
    image: bytes | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def source(self) -> str | bytes:
        return self.image if self.image is not None else str(self.path)


# Accepted names, first found wins: ours, then open_clip's CSV defaults (--csv-img-key filepath,
# --csv-caption-key title), so a training CSV made for open_clip works as a pool or corpus as it is.
PATH_COLUMNS = ("path", "filepath")
TEXT_COLUMNS = ("text", "caption", "title")


def pick_column(columns: Sequence[str], accepted: Sequence[str]) -> str | None:
    """The first of ``accepted`` among ``columns`` (``None`` if none is)."""
    return next((c for c in accepted if c in columns), None)


def _names(accepted: Sequence[str]) -> str:
    return " or ".join(repr(c) for c in accepted)


def _pairs_from_table(manifest: Path, root: Path | None, max_bad_fraction: float = MAX_BAD_ROWS) -> list[Pair]:
    rows = read_table(manifest)
    root = root if root is not None else manifest.parent
    if not rows:
        return []
    cols = list(rows[0])
    path_col, text_col = pick_column(cols, PATH_COLUMNS), pick_column(cols, TEXT_COLUMNS)
    if path_col is None or text_col is None:
        raise ManifestError(f"manifest {manifest}: needs a path column ({_names(PATH_COLUMNS)}) and a text column "
                            f"({_names(TEXT_COLUMNS)}), has {sorted(cols)}")
    counter = _row_counter(manifest, len(rows), max_bad_fraction)
    out = []
    ids: set[str] = set()
    root_r = root.resolve()
    for i, row in enumerate(rows, start=1):
        rel, text = _cell_text(row[path_col]), _cell_text(row[text_col])
        if rel is None or text is None:
            counter.skip(f"row {i}", "not UTF-8 text")
            continue
        # An empty caption gives the contrastive losses nothing to match; an empty path names no image.
        if not rel.strip() or not text.strip():
            counter.skip(f"row {i}", f"empty {'path' if not rel.strip() else text_col}")
            continue
        full = safe_join(root, rel, f"manifest {manifest} row {i}")
        meta = {k: v for k, v in row.items() if k not in (path_col, text_col)}
        raw_id = _cell_text(row.get("id"))
        pid = raw_id if raw_id else full.relative_to(root_r).as_posix()
        if pid in ids:  # ids key resumable outputs (embedding shards, captions): a repeat would collide
            counter.skip(f"row {i}", f"repeats id {pid}")
            continue
        ids.add(pid)
        out.append(Pair(id=pid, text=text, path=str(full), meta=meta))
        counter.ok()
    counter.check()
    if counter.n_bad:
        log.warning("%s", counter.summary())
    return out


def _pairs_from_shards(shards: Sequence[Path], max_bad_fraction: float = MAX_BAD_ROWS) -> list[Pair]:
    """img2dataset webdataset shards: ``<key>.jpg`` + ``<key>.txt`` (+ ``<key>.json``)."""
    import webdataset as wds

    from arf.images import BadInputCounter

    out = []
    counter = BadInputCounter(
        f"webdataset shards {shards[0].parent}" if shards else "webdataset shards", max_bad_fraction=max_bad_fraction
    )
    for shard in shards:
        if not shard.is_file():
            raise InputFileError(f"webdataset shard {shard} does not exist")
        try:
            # No decoding: keep raw bytes so a corrupt image is skipped later by the loader, not here.
            for sample in wds.WebDataset(str(shard), shardshuffle=False, empty_check=False):
                key = sample["__key__"]
                img_key = next((k for k in ("jpg", "jpeg", "png", "webp") if k in sample), None)
                if img_key is None:
                    log.warning("%s: sample %s has no image; skipped", shard, key)
                    continue
                try:
                    text = sample.get("txt", b"").decode("utf-8").strip()
                except UnicodeDecodeError:
                    counter.skip(f"{shard.name}/{key}", "caption is not UTF-8 text")
                    continue
                if not text:
                    counter.skip(f"{shard.name}/{key}", "empty caption")
                    continue
                meta: dict[str, Any] = {"shard": shard.name}
                if "json" in sample:
                    try:
                        meta.update(json.loads(sample["json"]))
                    except (ValueError, UnicodeDecodeError):
                        log.warning("%s: sample %s has unreadable json metadata", shard, key)
                out.append(Pair(id=f"{shard.name}/{key}", text=text, image=sample[img_key], meta=meta))
                counter.ok()
        except ArfError:
            raise
        except Exception as e:  # tarfile / webdataset errors on truncated shards
            raise InputFileError(f"webdataset shard {shard}: cannot read ({type(e).__name__}: {e})") from None
    counter.check()
    if counter.n_bad:
        log.warning("%s", counter.summary())
    return out


def read_pairs(
    source: str | Path | Sequence[str | Path],
    root: str | Path | None = None,
    max_bad_fraction: float = MAX_BAD_ROWS,
) -> list[Pair]:
    """Image–text pairs from a parquet/CSV/TSV manifest or webdataset shards.

    A manifest needs a path column (``path``, or open_clip's ``filepath``) and a text column (``text``,
    ``caption`` or open_clip's ``title``).

    ``source`` may be a manifest file, a ``.tar`` shard, a folder of shards, or a list of shards. Paths in a
    manifest are relative to ``root`` (default: the manifest's folder) and may not escape it. Pairs with
    non-UTF-8 or empty text, empty paths or a repeated id are skipped and counted; past ``max_bad_fraction`` of
    them the read fails (``TooManyBadInputs``) naming the first few.
    """
    if isinstance(source, (list, tuple)):
        shards = [Path(s) for s in source]
        return _pairs_from_shards(shards, max_bad_fraction)
    src = Path(source)  # type: ignore[arg-type]
    if src.is_dir():
        shards = sorted(src.glob("*.tar"))
        if not shards:
            raise InputFileError(f"{src}: no webdataset .tar shards in this folder")
        return _pairs_from_shards(shards, max_bad_fraction)
    if src.suffix == ".tar":
        return _pairs_from_shards([src], max_bad_fraction)
    return _pairs_from_table(src, Path(root) if root is not None else None, max_bad_fraction)


def stable_id(*parts: str) -> str:
    return hashlib.sha1("\x00".join(parts).encode()).hexdigest()[:16]
