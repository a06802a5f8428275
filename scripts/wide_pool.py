"""A wider candidate pool for the retrieved anchors: the offline benchmark's pool plus OpenClipArt, and its anchors.

The offline pool (2,488 OpenMoji / flag / Tux Paint pairs) is tiny next to the paper's CC3M, and at k 50 retrieval
hands out nearly all of it. This adds the ~8,100 public-domain OpenClipArt drawings (Debian ``openclipart-svg``,
``/usr/share/openclipart/svg``) with their ``dc:title`` as the text — noisy, web-like alt text, several languages —
and retrieves anchors from the union exactly as ``arf demo``'s pool stage does (base model, text2image, every
offline evaluation set excluded). docs/RESULTS.md §2 (eighteenth session) screened ARF on these anchors on val.

    python scripts/wide_pool.py OUT [--openclipart DIR] [--k 50] [--filter]
    # then: arf train --config configs/offline/arf.yaml --set anchors=OUT/anchors/retrieved

Writes OUT/pool/pool.parquet (+ images: the offline pool's copied, OpenClipArt rendered 112 px on white, the
Tux Paint drawings' style), OUT/anchors/pool-emb (embeddings, FAISS index) and OUT/anchors/retrieved.
``--filter`` keeps, as LAION filters its pairs by CLIP image–text cosine, only the OpenClipArt pairs whose cosine under
the base model is at least the offline pool pairs' median (OUT/pool/pool-filtered.parquet; the wide pool's embeddings
stay in OUT/anchors/pool-emb-unfiltered): the pool the plain val rule chose (docs/RESULTS.md §2, eighteenth session).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
from collections import Counter
from multiprocessing import Pool
from pathlib import Path

import numpy as np

OPENCLIPART = Path("/usr/share/openclipart/svg")
# A title carried by this many drawings or more names a collection ("gramastar", "Etiquette Icons"), not a picture.
COLLECTION_TITLE = 5
_TITLE = re.compile(r"<dc:title>(.*?)</dc:title>", re.S)


def svg_title(svg: str) -> str:
    """The drawing's ``dc:title`` with its whitespace collapsed ("" where it has none)."""
    m = _TITLE.search(svg)
    return " ".join(m.group(1).split()) if m else ""


def stem_words(path: Path) -> str:
    """A file name in words, numbers dropped: ``angry_monkey_benji_park_01.svg`` -> "angry monkey benji park"."""
    return " ".join(w for w in re.split(r"[_\-\s]+", path.stem) if w and not w.isdigit()) or path.stem


def clipart_texts(titles: dict[Path, str]) -> dict[Path, str]:
    """Each drawing's text: its title, or its file name in words where the title is empty or a collection's."""
    count = Counter(titles.values())
    return {p: t if t and count[t] < COLLECTION_TITLE else stem_words(p) for p, t in titles.items()}


def build_pool(base_root: Path, clipart: Path, out: Path, size: int = 112, workers: int = 2) -> Path:
    """The offline pool's rows and images plus every renderable OpenClipArt drawing; returns the parquet path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from arf.data.offline.render import Job, job_seed, run_job

    if not clipart.is_dir():
        raise SystemExit(f"{clipart} is missing; apt-get install openclipart-svg")
    schema = pq.read_schema(base_root / "pool.parquet")
    old = pq.read_table(base_root / "pool.parquet").to_pylist()
    for r in old:  # copied, not linked: manifests may not point outside their root
        dst = out / r["path"]
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base_root / r["path"], dst)
    files = sorted(clipart.rglob("*.svg"))
    svgs = {f: f.read_text(errors="replace") for f in files}
    texts = clipart_texts({f: svg_title(s) for f, s in svgs.items()})
    jobs, text_of = [], {}
    for f in files:
        rel = f"images/pool/openclipart/{hashlib.sha1(f.relative_to(clipart).as_posix().encode()).hexdigest()[:16]}.png"
        text_of[rel] = texts[f]
        jobs.append(Job(rel, "svg", svgs[f], "plain", size, job_seed(0, rel)))
    with Pool(workers) as p:
        done = p.starmap(run_job, [(j, str(out)) for j in jobs], chunksize=64)
    seen, rows, bad, dup = {r["sha256"] for r in old}, list(old), 0, 0
    for rel, sha in done:
        if not sha:
            bad += 1  # run_job logged why
        elif sha in seen:
            dup += 1  # a byte-identical render of another drawing (or of an offline pool image)
        else:
            seen.add(sha)
            rows.append({**dict.fromkeys(schema.names), "path": rel, "text": text_of[rel], "family": "openclipart",
                         "sha256": sha})
    path = out / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    print(f"pool: {len(old)} offline + {len(rows) - len(old)} OpenClipArt ({bad} unrenderable, {dup} duplicate "
          f"pictures dropped) = {len(rows)} pairs: {path}")
    return path


def well_matched(cosine: np.ndarray, added: np.ndarray) -> tuple[np.ndarray, float]:
    """Rows to keep, and the floor: every row not ``added``, and the added ones whose image–text cosine is at least
    the median of the others' (the offline pool's pairs: how well a pair the benchmark trusts is matched)."""
    floor = float(np.median(cosine[~added]))
    return ~added | (cosine >= floor), floor


def embed(pool: Path, emb: Path) -> None:
    """Embed ``pool`` with the base into ``emb`` (again, if ``emb`` holds another pool's embeddings)."""
    from arf.anchors.config import PoolConfig
    from arf.anchors.pool import embed_pool

    embed_pool(PoolConfig(source=str(pool), out=str(emb), model="arf:mini-clip", progress=False), replace_stale=True)


def filter_pool(pool: Path, emb: Path) -> Path:
    """Write ``pool``'s well-matched rows (:func:`well_matched`, by the embeddings in ``emb``) beside it."""
    import pyarrow.parquet as pq

    from arf.anchors.pool import load_embeddings

    img, meta = load_embeddings(emb, "image")
    txt, _ = load_embeddings(emb, "text")
    cosine = (img * txt).sum(1) / np.linalg.norm(img, axis=1) / np.linalg.norm(txt, axis=1)
    added = np.array(["/openclipart/" in p for p in meta.column("path").to_pylist()])
    mask, floor = well_matched(cosine, added)
    keep = set(np.asarray(meta.column("sha256").to_pylist(), dtype=object)[mask])
    table = pq.read_table(pool)
    rows = table.filter([sha in keep for sha in table.column("sha256").to_pylist()])
    out = pool.with_name("pool-filtered.parquet")
    pq.write_table(rows, out)
    print(f"filtered: {int(added.sum())} OpenClipArt pairs, {len(rows) - int((~added).sum())} kept (cosine >= "
          f"{floor:.3f}, the offline pairs' median): {out}")
    return out


def retrieve_anchors(pool: Path, data_root: Path, out: Path, k: int) -> None:
    """``arf demo``'s pool stage on ``pool``: embed, index, retrieve for train's classes, evaluation sets excluded."""
    from arf.anchors.config import IndexConfig, RetrieveConfig
    from arf.anchors.index import build_pool_index
    from arf.anchors.retrieve import retrieve
    from arf.anchors.sources import suite_spec
    from arf.data.suites import get_suite

    suite = get_suite("offline", root=data_root)
    excluded = [suite_spec("offline", s.name, data_root) for s in suite.sets if s.role != "train"]
    emb = out / "pool-emb"
    embed(pool, emb)
    build_pool_index(IndexConfig(emb=str(emb)))
    res = retrieve(RetrieveConfig(emb=str(emb), images=suite_spec("offline", "train", data_root), model="arf:mini-clip",
                                  strategy="text2image", k=k, exclude=excluded, out=str(out / "retrieved")))
    print(f"anchors: {res.n_anchors} for {len(res.per_class)} classes: {out / 'retrieved'}")


def main(argv: list[str] | None = None) -> int:
    from arf.paths import data_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--openclipart", type=Path, default=OPENCLIPART)
    ap.add_argument("--data-root", type=Path, help="offline benchmark build (default: the cached one)")
    ap.add_argument("--k", type=int, default=50, help="anchors per class (the committed k)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--filter", action="store_true", help="keep only well-matched OpenClipArt pairs (see above)")
    args = ap.parse_args(argv)
    data_root = args.data_root or data_dir() / "offline" / "v1"
    pool = build_pool(data_root, args.openclipart, args.out / "pool", workers=args.workers)
    if args.filter:
        emb = args.out / "anchors" / "pool-emb-unfiltered"
        embed(pool, emb)
        pool = filter_pool(pool, emb)
    retrieve_anchors(pool, data_root, args.out / "anchors", args.k)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
