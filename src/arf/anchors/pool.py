"""``arf pool embed``: embed a candidate pool of image–text pairs with the base model's two towers.

Reader → encoder → writer, as in clip-retrieval's ``clip_inference``:

- **reader**: ``arf.data.read_pairs`` (parquet/CSV manifest or img2dataset webdataset shards, one tar at a time),
  cut into output shards of ``shard_size`` pairs in pool order; DataLoader workers decode (``open_image``, corrupt
  images skipped and counted), hash the image bytes (sha256, used to keep finetuning/test images out of the
  anchors), preprocess and tokenize;
- **encoder**: ``encode_image`` / ``encode_text`` (unit-normalised) in the main process;
- **writer**: a background thread writes, per shard ``i``, ``img_emb/img_emb_{i:05d}.npy``,
  ``text_emb/text_emb_{i:05d}.npy``, ``metadata/metadata_{i:05d}.parquet`` (``pool_id``, ``path``, ``text``,
  ``sha256``) and, last, the completion marker ``done/shard_{i:05d}.json``.

A rerun skips shards with a marker (resume after kill -9 loses at most the shards in flight). ``--shard i/n`` (or
torchrun's ``RANK``/``WORLD_SIZE``) makes a process embed shards ``i, i+n, ...``; whichever process sees every
marker last writes ``embed_info.json``. For webdataset pools ``path`` is ``<tar>#<key>``; ``open_pool_image``
reads both forms.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arf.anchors.config import PoolConfig, parse_shard
from arf.anchors.encode import single_thread
from arf.errors import ArfError, InputFileError
from arf.images import BadImage, BadInputCounter, open_image
from arf.io import atomic_path, read_json, sha256_bytes, sha256_file, write_json, write_parquet

log = logging.getLogger(__name__)

INFO_FILE = "embed_info.json"


@dataclass
class PoolRecord:
    """One pool pair as the embedder sees it: ``ref`` is a file path or ``<tar>#<key>``."""

    pool_id: str
    ref: str
    text: str
    image: bytes | None = None   # in-memory bytes (webdataset); None -> read ``ref``


def iter_pool(source: str | Path, root: str | Path | None = None) -> Iterator[PoolRecord]:
    """Pool pairs in a stable order; webdataset shards are read one tar at a time to bound memory."""
    from arf.data import read_pairs

    src = Path(source)
    tars = sorted(src.glob("*.tar")) if src.is_dir() else [src] if src.suffix == ".tar" else []
    if src.is_dir() and not tars:
        raise InputFileError(f"{src}: no webdataset .tar shards in this folder")
    if tars:
        for tar in tars:
            for p in read_pairs(tar):
                key = p.id.split("/", 1)[-1]
                yield PoolRecord(p.id, f"{tar.resolve()}#{key}", p.text, p.image)
        return
    if not src.is_file():
        raise InputFileError(f"pool not found: {src}")
    for p in read_pairs(src, root):
        yield PoolRecord(p.id, str(p.path), p.text, p.image)


def open_pool_image(ref: str) -> Any:
    """The RGB image of a pool ``path``: a file, or ``<tar>#<key>`` inside a webdataset shard."""
    if "#" in ref and ref.split("#", 1)[0].endswith(".tar"):
        tar_path, key = ref.split("#", 1)
        with tarfile.open(tar_path) as tf:
            for m in tf.getmembers():
                stem, _, ext = m.name.rpartition(".")
                if stem == key and ext in ("jpg", "jpeg", "png", "webp"):
                    f = tf.extractfile(m)
                    if f is not None:
                        return open_image(f.read(), name=ref)
        raise BadImage.at(ref, f"no image with key {key!r} in {tar_path}")
    return open_image(ref)


def _read_bytes(rec: PoolRecord) -> bytes:
    if rec.image is not None:
        return rec.image
    try:
        return Path(rec.ref).read_bytes()
    except OSError as e:
        raise BadImage.at(rec.ref, f"cannot read ({e.strerror})") from None


class _ShardBatches:
    """Iterable over the batches of the shards to do; each DataLoader worker takes every n-th batch."""

    def __init__(self, shards: list[tuple[int, list[PoolRecord]]], bundle: Any, batch_size: int) -> None:
        self.shards = shards
        self.preprocess = bundle.preprocess_val
        self.tokenizer = bundle.tokenizer
        self.batch_size = batch_size

    def plan(self) -> list[tuple[int, int, int, list[PoolRecord]]]:
        out = []
        for shard, recs in self.shards:
            n_b = max(1, -(-len(recs) // self.batch_size))
            out += [(shard, b, n_b, recs[b * self.batch_size:(b + 1) * self.batch_size]) for b in range(n_b)]
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import torch
        import torch.utils.data as tud

        info = tud.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for j, (shard, b, n_b, recs) in enumerate(self.plan()):
            if j % nw != wid:
                continue
            pixels, keep, hashes, bad = [], [], [], []
            with single_thread():   # a no-op in DataLoader workers, which already run one thread
                for rec in recs:
                    try:
                        data = _read_bytes(rec)
                        pixels.append(self.preprocess(open_image(data, name=rec.ref)))
                        keep.append(rec)
                        hashes.append(sha256_bytes(data))
                    except BadImage as e:
                        bad.append((rec.pool_id, e.reason))
            yield {
                "shard": shard, "batch": b, "n_batches": n_b, "records": keep, "sha256": hashes, "bad": bad,
                "images": torch.stack(pixels) if pixels else None,
                "tokens": self.tokenizer([r.text for r in keep]) if keep else None,
            }


def _as_iterable_dataset(obj: _ShardBatches) -> Any:
    import torch.utils.data as tud

    class _DS(tud.IterableDataset):
        def __iter__(self) -> Iterator[dict[str, Any]]:
            return iter(obj)

    return _DS()


def _shard_paths(out: Path, i: int) -> dict[str, Path]:
    return {
        "img": out / "img_emb" / f"img_emb_{i:05d}.npy",
        "text": out / "text_emb" / f"text_emb_{i:05d}.npy",
        "meta": out / "metadata" / f"metadata_{i:05d}.parquet",
        "done": out / "done" / f"shard_{i:05d}.json",
    }


def _write_shard(out: Path, i: int, img: np.ndarray, txt: np.ndarray, recs: list[PoolRecord], hashes: list[str],
                 bad: list[tuple[str, str]], dtype: str) -> None:
    import pyarrow as pa

    p = _shard_paths(out, i)
    for key, arr in (("img", img), ("text", txt)):
        with atomic_path(p[key]) as tmp, open(tmp, "wb") as f:
            np.save(f, arr.astype(dtype))
    write_parquet(p["meta"], pa.table({
        "pool_id": pa.array([r.pool_id for r in recs], pa.string()),
        "path": pa.array([r.ref for r in recs], pa.string()),
        "text": pa.array([r.text for r in recs], pa.string()),
        "sha256": pa.array(hashes, pa.string()),
    }))
    # The marker goes last: a shard without it is redone, whatever else of it is on disk.
    write_json(p["done"], {"shard": i, "n": len(recs), "skipped": dict(bad)})


def world_from_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment, (0, 1) outside it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass
class EmbedResult:
    out: Path
    shards_done: int              # shards this process embedded now
    shards_total: int
    pairs: int                    # pairs embedded by this process now
    skipped: int
    pairs_per_s: float
    complete: bool                # every shard of the pool has its marker


def source_digest(source: str | Path) -> str:
    """What a pool's pairs are, cheaply: a manifest file's sha256, or a shard folder's ``.tar`` names and sizes.

    Image files a manifest points to are not hashed (a CC3M-sized pool would take longer to hash than to read).
    """
    p = Path(source).expanduser()
    if p.is_file():
        return sha256_file(p)
    shards = sorted(p.glob("*.tar"))
    return sha256_bytes("\n".join(f"{f.name}:{f.stat().st_size}" for f in shards).encode())


def embed_pool(cfg: PoolConfig, bundle: Any | None = None, *, stop_after_shards: int | None = None,
               replace_stale: bool = False) -> EmbedResult:
    """Embed ``cfg.source`` into ``cfg.out``; resumable and splittable (see the module docstring).

    ``cfg.out`` holding embeddings of another source, model (weights) or layout is an error, unless
    ``replace_stale`` (the demo, whose folder is its own): then it is emptied and the pool embedded again.

    ``stop_after_shards`` makes the run raise after that many shards are written (tests of resumption).
    """
    import torch

    from arf.anchors.encode import load_bundle
    from arf.evaluate.zeroshot import weights_fingerprint
    from arf.models.text import text_pad_id, trim_padding
    from arf.progress import progress_bar

    cfg.validate()
    rank, world = parse_shard(cfg.shard) if cfg.shard else world_from_env()
    out = Path(cfg.out)
    bundle = load_bundle(bundle if bundle is not None else cfg.model, cfg.device)
    model_id = str(getattr(bundle, "model_id", cfg.model))
    meta_path = out / "embed_config.json"
    # Content, not only names: a rebuilt pool at the same path, or a rebuilt base under the same model id, would
    # otherwise resume onto embeddings of other pairs or other weights (every shard "done").
    identity = {"source": str(Path(cfg.source).resolve()), "source_digest": source_digest(cfg.source),
                "model": model_id, "weights": weights_fingerprint(bundle.model), "shard_size": cfg.shard_size,
                "dtype": cfg.dtype}
    if meta_path.is_file():
        old = read_json(meta_path)
        if old != identity:
            changed = sorted(k for k in identity.keys() | old.keys() if old.get(k) != identity.get(k))
            if not replace_stale or world > 1:  # several ranks must not empty a folder the others write to
                raise ArfError(f"{out} holds embeddings made with other {', '.join(changed)} ({old}, not "
                               f"{identity}); choose another --out or delete it")
            log.warning("%s holds embeddings made with other %s: embedding the pool again", out, ", ".join(changed))
            shutil.rmtree(out)
    if not meta_path.is_file():
        write_json(meta_path, identity)

    # Keep only the records of shards this process still has to embed: webdataset pools carry image bytes, and
    # other ranks' or finished shards need not sit in memory.
    todo_records: dict[int, list[PoolRecord]] = {}
    n_records = 0
    for rec in iter_pool(cfg.source, cfg.root):
        shard = n_records // cfg.shard_size
        n_records += 1
        if shard % world == rank and not _shard_paths(out, shard)["done"].is_file():
            todo_records.setdefault(shard, []).append(rec)
    n_shards = max(1, -(-n_records // cfg.shard_size))
    mine = [i for i in range(n_shards) if i % world == rank]
    todo = [i for i in mine if not _shard_paths(out, i)["done"].is_file()]
    if len(todo) < len(mine):
        log.info("resuming: %d of this process's %d shards already embedded", len(mine) - len(todo), len(mine))
    shards = [(i, todo_records.get(i, [])) for i in todo]
    batches = _ShardBatches(shards, bundle, cfg.batch_size)
    loader = torch.utils.data.DataLoader(_as_iterable_dataset(batches), batch_size=None,
                                         num_workers=cfg.num_workers)
    counter = BadInputCounter("pool embed", cfg.max_bad_fraction, total=sum(len(r) for _, r in shards))
    writes: queue.Queue = queue.Queue(maxsize=4)
    errors: list[BaseException] = []

    def writer() -> None:
        while (job := writes.get()) is not None:
            try:
                _write_shard(out, *job, cfg.dtype)
            except BaseException as e:  # surfaced in the main thread
                errors.append(e)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    pending: dict[int, dict[int, Any]] = {}
    dev = next(bundle.model.parameters()).device
    bundle.model.eval()
    # Pool texts are short (median ~8 tokens of a 256 context): towers that mask padding encode only used columns.
    pad_id = text_pad_id(bundle.model)
    n_pairs, n_written, t0 = 0, 0, time.perf_counter()
    bar = progress_bar(total=sum(len(r) for _, r in shards), unit="pair", enabled=cfg.progress and rank == 0,
               desc=f"embed {rank}/{world}")
    try:
        with torch.inference_mode():
            for item in loader:
                for key, reason in item["bad"]:
                    counter.skip(key, reason)
                if item["images"] is not None:
                    img = bundle.model.encode_image(item["images"].to(dev), normalize=True).float().cpu().numpy()
                    tokens = trim_padding(item["tokens"], pad_id).to(dev)
                    txt = bundle.model.encode_text(tokens, normalize=True).float().cpu().numpy()
                    for _ in item["records"]:
                        counter.ok()
                else:
                    img = txt = None
                bar.update(len(item["records"]) + len(item["bad"]))
                got = pending.setdefault(item["shard"], {})
                got[item["batch"]] = (img, txt, item["records"], item["sha256"], item["bad"])
                if len(got) == item["n_batches"]:
                    del pending[item["shard"]]
                    parts = [got[b] for b in range(item["n_batches"])]
                    arrays = [p for p in parts if p[0] is not None]
                    dim = arrays[0][0].shape[1] if arrays else 0
                    img_all = np.concatenate([p[0] for p in arrays]) if arrays else np.zeros((0, dim), np.float32)
                    txt_all = np.concatenate([p[1] for p in arrays]) if arrays else np.zeros((0, dim), np.float32)
                    recs = [r for p in parts for r in p[2]]
                    hashes = [h for p in parts for h in p[3]]
                    bad = [x for p in parts for x in p[4]]
                    writes.put((item["shard"], img_all, txt_all, recs, hashes, bad))
                    n_pairs += len(recs)
                    n_written += 1
                    if errors:
                        raise errors[0]
                    if stop_after_shards is not None and n_written >= stop_after_shards:
                        raise _Interrupted(f"stopped after {n_written} shards")
    finally:
        writes.put(None)
        thread.join()
        bar.close()
    if errors:
        raise errors[0]
    counter.check()
    elapsed = time.perf_counter() - t0
    done = [i for i in range(n_shards) if _shard_paths(out, i)["done"].is_file()]
    complete = len(done) == n_shards
    if complete:
        _write_info(out, cfg, model_id, n_shards, n_records)
    rate = n_pairs / elapsed if elapsed > 0 and n_pairs else 0.0
    log.info("pool embed %d/%d: %d shards, %d pairs, %d skipped, %.1f pairs/s%s", rank, world, n_written, n_pairs,
             len(counter.bad), rate, "" if complete else f" ({len(done)}/{n_shards} shards of the pool done)")
    return EmbedResult(out, n_written, n_shards, n_pairs, len(counter.bad), rate, complete)


class _Interrupted(RuntimeError):
    pass


def _write_info(out: Path, cfg: PoolConfig, model_id: str, n_shards: int, n_records: int) -> None:
    n, skipped, dim = 0, 0, 0
    for i in range(n_shards):
        d = read_json(_shard_paths(out, i)["done"])
        n += d["n"]
        skipped += len(d["skipped"])
        if not dim and d["n"]:
            dim = int(np.load(_shard_paths(out, i)["img"], mmap_mode="r").shape[1])
    write_json(out / INFO_FILE, {"source": str(Path(cfg.source).resolve()), "model": model_id, "dim": dim,
                                  "n_shards": n_shards, "shard_size": cfg.shard_size, "n_pairs": n_records,
                                  "n_embedded": n, "n_skipped": skipped, "dtype": cfg.dtype})


def load_info(emb_dir: str | Path) -> dict[str, Any]:
    p = Path(emb_dir) / INFO_FILE
    if not p.is_file():
        raise InputFileError(f"{emb_dir}: no {INFO_FILE}; `arf pool embed` has not finished every shard there")
    return read_json(p)


def load_embeddings(emb_dir: str | Path, modality: str = "image") -> tuple[np.ndarray, Any]:
    """All shards' ``modality`` ("image" | "text") embeddings as float32 rows, and the metadata table, in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(emb_dir)
    info = load_info(out)
    key = {"image": "img", "text": "text"}[modality]
    arrays, tables = [], []
    for i in range(info["n_shards"]):
        p = _shard_paths(out, i)
        arrays.append(np.load(p[key]).astype(np.float32))
        tables.append(pq.read_table(p["meta"]))
    # A shard whose images were all corrupt is stored as (0, 0): leave it out of the concatenation.
    arrays = [a for a in arrays if len(a)] or [np.zeros((0, info["dim"]), np.float32)]
    return np.concatenate(arrays), pa.concat_tables(tables)
