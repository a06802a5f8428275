"""The ``arf caption`` stage: one caption per image of the finetuning set, resumable after kill -9.

The sorted image list is cut into fixed chunks of ``chunk_size`` images; chunk ``i`` is written atomically to
``.parts/<key>/part_{i:06d}.parquet`` (``key`` hashes the captioner, the image list and the chunk size). A rerun
skips every chunk whose file exists, so a kill loses at most the chunk in flight and duplicates nothing; when all
chunks exist they are merged in order into ``captions.parquet`` (``image_id``, ``path``, ``caption``,
``captioner``) with ``captions.json`` beside it (captioner, counts, skipped images, throughput).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from arf.anchors.captioners import Captioner, create_captioner
from arf.anchors.config import CaptionConfig
from arf.anchors.sources import ImageSet, resolve_set
from arf.config import config_hash
from arf.images import BadImage, BadInputCounter, open_image
from arf.io import read_json, write_json, write_parquet

log = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.parquet"
INFO_FILE = "captions.json"


@dataclass
class CaptionResult:
    path: Path
    n_captions: int
    n_skipped: int
    images_per_s: float          # over the images captioned in this run (0 when everything was already done)
    captioner: str
    sample: list[tuple[str, str]] = field(default_factory=list)   # (image_id, caption)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80]


def default_out(images: ImageSet, captioner_spec: str) -> Path:
    return images.root / "captions" / _slug(f"{images.name}-{captioner_spec}")


def _part_table(rows: list[tuple[str, str, str]], captioner: str, skipped: dict[str, str]):  # -> pa.Table
    import pyarrow as pa

    table = pa.table({
        "image_id": pa.array([r[0] for r in rows], pa.string()),
        "path": pa.array([r[1] for r in rows], pa.string()),
        "caption": pa.array([r[2] for r in rows], pa.string()),
        "captioner": pa.array([captioner] * len(rows), pa.string()),
    })
    return table.replace_schema_metadata({"skipped": json.dumps(skipped)})


def _caption_chunk(captioner: Captioner, images: ImageSet, ids: list[str], batch_size: int,
                   counter: BadInputCounter) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    rows: list[tuple[str, str, str]] = []
    skipped: dict[str, str] = {}
    for b in range(0, len(ids), batch_size):
        batch_ids = ids[b:b + batch_size]
        paths = [str(images.abs_path(i)) for i in batch_ids]
        pils = None
        if captioner.needs_pixels:
            good_ids, good_paths, pils = [], [], []
            for i, p in zip(batch_ids, paths, strict=True):
                try:
                    pils.append(open_image(p))
                    good_ids.append(i)
                    good_paths.append(p)
                except BadImage as e:
                    skipped[i] = e.reason
                    counter.skip(i, e.reason)
            batch_ids, paths = good_ids, good_paths
            if not batch_ids:
                continue
        caps = captioner.caption(pils, batch_ids, paths)
        for i, p, c in zip(batch_ids, paths, caps, strict=True):
            if c is None:  # e.g. file: with no usable row for this image; counted like an undecodable image
                skipped[i] = captioner.skip_reason(i)
                counter.skip(i, skipped[i])
                continue
            counter.ok()
            rows.append((i, p, c))
    return rows, skipped


def run_caption(cfg: CaptionConfig, *, captioner: Captioner | None = None, images: ImageSet | None = None,
                on_chunk: Callable[[int], None] | None = None) -> CaptionResult:
    """Caption every image of ``cfg.images`` (or ``images``); resumes from finished chunks.

    ``on_chunk(i)`` is called after chunk ``i`` is safely on disk (tests use it to interrupt a run).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if images is not None and not cfg.images:
        cfg.images = images.name
    cfg.validate()
    images = images or resolve_set(cfg.images, cfg.root)
    ids = sorted(images.paths)
    out_dir = Path(cfg.out) if cfg.out else default_out(images, cfg.captioner)
    final = out_dir / CAPTIONS_FILE
    captioner = captioner or create_captioner(cfg.captioner, cfg)
    key = config_hash(captioner.id, ids, cfg.chunk_size, cfg.prompt, cfg.max_new_tokens, cfg.top_m, cfg.margin)
    info_path = out_dir / INFO_FILE
    if final.is_file() and info_path.is_file() and read_json(info_path).get("key") == key:
        info = read_json(info_path)
        log.info("captions up to date: %s (%d captions)", final, info["n_captions"])
        return CaptionResult(final, info["n_captions"], info["n_skipped"], 0.0, captioner.id,
                             [tuple(s) for s in info.get("sample", [])])

    captioner.prepare(ids, [str(images.abs_path(i)) for i in ids])
    parts_dir = out_dir / ".parts" / key
    parts_dir.mkdir(parents=True, exist_ok=True)
    chunks = [ids[i:i + cfg.chunk_size] for i in range(0, len(ids), cfg.chunk_size)]
    todo = [c for c in range(len(chunks)) if not (parts_dir / f"part_{c:06d}.parquet").is_file()]
    if len(todo) < len(chunks):
        log.info("resuming: %d of %d chunks already captioned", len(chunks) - len(todo), len(chunks))
    counter = BadInputCounter("caption", cfg.max_bad_fraction, total=sum(len(chunks[c]) for c in todo))
    t0 = time.perf_counter()
    n_done = 0
    for c in todo:
        rows, skipped = _caption_chunk(captioner, images, chunks[c], cfg.batch_size, counter)
        write_parquet(parts_dir / f"part_{c:06d}.parquet", _part_table(rows, captioner.id, skipped))
        n_done += len(chunks[c])
        elapsed = time.perf_counter() - t0
        log.info("chunk %d/%d: %d images, %.1f images/s", c + 1, len(chunks), n_done, n_done / max(elapsed, 1e-9))
        if on_chunk is not None:
            on_chunk(c)
    elapsed = time.perf_counter() - t0
    throughput = n_done / elapsed if n_done and elapsed > 0 else 0.0

    tables, skipped_all = [], {}
    for c in range(len(chunks)):
        t = pq.read_table(parts_dir / f"part_{c:06d}.parquet")
        skipped_all.update(json.loads((t.schema.metadata or {}).get(b"skipped", b"{}")))
        tables.append(t.replace_schema_metadata(None))
    merged = pa.concat_tables(tables) if tables else _part_table([], captioner.id, {}).replace_schema_metadata(None)
    total = len(ids)
    # Judge the bad fraction over the whole set, not just the chunks of this run.
    BadInputCounter("caption", cfg.max_bad_fraction, good=total - len(skipped_all), bad=skipped_all,
                    n_bad=len(skipped_all)).check()
    write_parquet(final, merged)
    step = max(1, merged.num_rows // 5)
    sample = [(merged.column("image_id")[i].as_py(), merged.column("caption")[i].as_py())
              for i in range(0, merged.num_rows, step)][:5]
    write_json(info_path, {
        "key": key, "captioner": captioner.id, "set": images.name, "root": str(images.root),
        "n_images": total, "n_captions": merged.num_rows, "n_skipped": len(skipped_all), "skipped": skipped_all,
        "images_per_s_last_run": round(throughput, 3), "sample": sample,
    })
    shutil.rmtree(out_dir / ".parts", ignore_errors=True)
    log.info("wrote %s: %d captions, %d skipped, %.2f images/s (%s)", final, merged.num_rows, len(skipped_all),
             throughput, captioner.id)
    for image_id, cap in sample:
        log.info("  %s -> %s", image_id, cap)
    return CaptionResult(final, merged.num_rows, len(skipped_all), throughput, captioner.id, sample)


def show_captions(path: str | Path, n: int = 10) -> list[tuple[str, str]]:
    """``n`` evenly spaced (image_id, caption) rows of a captions parquet (or of a caption output folder)."""
    import pyarrow.parquet as pq

    p = Path(path)
    if p.is_dir():
        p = p / CAPTIONS_FILE
    if not p.is_file():
        from arf.errors import InputFileError

        raise InputFileError(f"no captions at {p}; run `arf caption` first")
    t = pq.read_table(p, columns=["image_id", "caption"])
    step = max(1, t.num_rows // max(n, 1))
    return [(t.column("image_id")[i].as_py(), t.column("caption")[i].as_py()) for i in range(0, t.num_rows, step)][:n]
