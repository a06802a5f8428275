"""``arf retrieve``: image–text anchors (ITAR) from an embedded pool for the classes of a finetuning set.

Strategies (registry ``STRATEGIES``), all scored by cosine similarity in the base model's space:

- ``text2image`` (default): each class's query is its zero-shot text embedding (the mean of its prompt
  templates' embeddings, renormalised), searched against pool *images*. Why the default: it asks the same question
  the zero-shot head asks, so anchors are images CLIP already ties to the class concept — in every style the pool
  holds, not only the finetuning domain — and each keeps its own natural caption. That diversity is what anchors
  are for (keeping out-of-domain and zero-shot behaviour while finetuning).
- ``image2image``: the finetuning images of a class (up to 64 per class, seeded) are queries against pool images;
  an item's class score is its best similarity to one of them. Closer to the finetuning domain, hence less diverse.
- ``text2text``: the class text query against pool *texts*; relies on the pool captions naming the class.
  It needs only the text tower, so it is the better choice when the base model's image–text alignment is weak:
  on the offline benchmark with ``arf:mini-clip`` (k=8, 300 classes) 28.5% of text2text anchors name their
  class in their text vs 0.8% for text2image (measured 2026-11-24; see docs/BENCHMARKS.md).

Selection: candidates are fetched per query (``fetch`` starts at 4·k and grows ×2, up to 64·k, until every
class has ``k``); pool items whose image bytes (sha256) or path match a finetuning or excluded (test) image are dropped
first; an item found for several classes goes to the class where it scores best (deduplicated across classes); each
class keeps its top ``k`` above the optional ``floor`` (class-balanced: at most ``k`` each). With a ``pair_floor``
(LAION's CLIP-score filter) the pool pairs whose own image–text cosine is below it are never searched: through the
index with a FAISS ID selector, so one index serves any floor.

Output: ``anchors.parquet`` (``pool_id``, ``path``, ``text``, ``score``, ``query_class``, ``query_label``) and
``anchors.json`` naming the pool, model, finetuning set and its classnames hash, strategy and k;
:func:`load_anchors` refuses a file made for another model or dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arf.anchors.config import RetrieveConfig
from arf.anchors.sources import ImageSet, resolve_set, suite_siblings
from arf.errors import ArfError, ConfigError, InputFileError
from arf.registry import Registry

log = logging.getLogger(__name__)

ANCHORS_FILE = "anchors.parquet"
SIDECAR_FILE = "anchors.json"
MAX_IMAGE_QUERIES_PER_CLASS = 64


@dataclass
class Queries:
    """What a strategy searches: which pool embeddings (``modality``) and, per class, a [m_c, d] query matrix."""

    modality: str
    per_class: list[np.ndarray]


STRATEGIES: Registry[Callable[[Any, ImageSet, list[str]], Queries]] = Registry("retrieval strategy")


def _templates(images: ImageSet, templates: list[str] | None) -> list[str]:
    return templates or images.templates or ["a photo of a {}."]


@STRATEGIES.register("text2image")
def text2image(bundle: Any, images: ImageSet, templates: list[str]) -> Queries:
    from arf.anchors.encode import class_text_queries

    q = class_text_queries(bundle, images.classnames or [], templates)
    return Queries("image", [q[c:c + 1] for c in range(len(q))])


@STRATEGIES.register("text2text")
def text2text(bundle: Any, images: ImageSet, templates: list[str]) -> Queries:
    from arf.anchors.encode import class_text_queries

    q = class_text_queries(bundle, images.classnames or [], templates)
    return Queries("text", [q[c:c + 1] for c in range(len(q))])


@STRATEGIES.register("image2image")
def image2image(bundle: Any, images: ImageSet, templates: list[str]) -> Queries:
    from arf.anchors.encode import encode_pils
    from arf.images import BadImage, open_image

    if images.labels is None:
        raise ConfigError(f"strategy image2image needs the labels of the finetuning set {images.name}")
    rng = np.random.default_rng(0)
    per_class = []
    for c in range(len(images.classnames or [])):
        idx = [i for i, y in enumerate(images.labels) if y == c]
        if len(idx) > MAX_IMAGE_QUERIES_PER_CLASS:
            idx = sorted(rng.choice(idx, MAX_IMAGE_QUERIES_PER_CLASS, replace=False).tolist())
        pils = []
        for i in idx:
            try:
                pils.append(open_image(images.abs_path(images.paths[i])))
            except BadImage as e:
                log.warning("image2image: query image skipped (%s)", e)
        per_class.append(encode_pils(bundle, pils) if pils else np.zeros((0, 0), np.float32))
    dim = next((q.shape[1] for q in per_class if q.size), 0)
    return Queries("image", [q if q.size else np.zeros((0, dim), np.float32) for q in per_class])


def excluded_rows(meta: Any, sets: list[ImageSet]) -> np.ndarray:
    """Boolean mask of pool rows whose image is one of ``sets``' images (same sha256 of bytes, or same file)."""
    from arf.io import sha256_file

    hashes: set[str] = set()
    paths: set[str] = set()
    for s in sets:
        for i, rel in enumerate(s.paths):
            p = s.abs_path(rel)
            paths.add(str(p.resolve()))
            if s.sha256 is not None and s.sha256[i]:
                hashes.add(s.sha256[i])
            elif p.is_file():
                hashes.add(sha256_file(p))
    pool_sha = meta.column("sha256").to_pylist()
    pool_paths = meta.column("path").to_pylist()
    return np.array([
        h in hashes or ("#" not in p and str(Path(p).resolve()) in paths)
        for h, p in zip(pool_sha, pool_paths, strict=True)
    ], dtype=bool)


def pair_cosines(img: np.ndarray, txt: np.ndarray) -> np.ndarray:
    """Each pool pair's own image–text cosine (the CLIP score LAION filters on), from its two embedding rows."""
    norms = np.linalg.norm(img, axis=1) * np.linalg.norm(txt, axis=1)
    return (img * txt).sum(1) / np.maximum(norms, 1e-12)


def below_pair_floor(cosine: np.ndarray, paths: list[str], floor: float | str,
                     glob: str | None) -> tuple[np.ndarray, float]:
    """Rows the pair floor drops, and the floor's value. Only rows whose path matches ``glob`` (all when None) are
    tested; ``floor`` "median" is the median cosine of the rows that do not match (the pairs one trusts)."""
    from fnmatch import fnmatchcase

    tested = np.array([fnmatchcase(p, glob) for p in paths], dtype=bool) if glob else np.ones(len(paths), bool)
    if floor == "median":
        if tested.all():
            raise ConfigError(f"pair_floor_paths: every pool pair matches {glob!r}; 'median' needs pairs outside it")
        value = float(np.median(cosine[~tested]))
    else:
        value = float(floor)
    return tested & (cosine < value), value


def _selector_params(index: Any, ids: np.ndarray) -> Any:
    """FAISS search parameters that restrict ``index`` to the rows ``ids``, keeping its tuned nprobe / efSearch."""
    import faiss

    sel = faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))

    def params_for(ix: Any) -> Any:
        ix = faiss.downcast_index(ix)
        if isinstance(ix, faiss.IndexPreTransform):
            p = faiss.SearchParametersPreTransform()
            p.index_params = inner = params_for(ix.index)
            p.referenced_objects = [inner]
            return p
        ivf = faiss.try_extract_index_ivf(ix)
        if ivf is not None:
            return faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nprobe)
        if isinstance(ix, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(sel=sel, efSearch=ix.hnsw.efSearch)
        return faiss.SearchParameters(sel=sel)

    params = params_for(index)
    params.referenced_objects = [*getattr(params, "referenced_objects", []), sel, ids]  # SWIG holds raw pointers
    return params


Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def restricted_search(index: Any, x: np.ndarray, allowed: np.ndarray | None) -> tuple[Search, int]:
    """A top-k search over the ``allowed`` rows of ``x`` (every row when None) and how many rows it covers: through
    the index with an ID selector (a filter must not cost an extra index), else exactly over the allowed rows."""
    if allowed is None or allowed.all():
        return (lambda q, k: _search(index, x, q, k)), len(x)
    ids = np.flatnonzero(allowed).astype(np.int64)
    if index is None:
        xs = x[ids]

        def exact(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            scores, rows = _search(None, xs, q, k)
            return scores, ids[rows]

        return exact, len(ids)
    params = _selector_params(index, ids)

    def through_index(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return index.search(np.ascontiguousarray(q, np.float32), min(k, len(ids)), params=params)

    return through_index, len(ids)


def _search(index: Any, x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, len(x))
    if index is not None:
        return index.search(np.ascontiguousarray(q, np.float32), k)
    sims = q @ x.T
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < len(x) else np.tile(np.arange(len(x)), (len(q), 1))
    part = np.take_along_axis(sims, idx, 1)
    order = np.argsort(-part, axis=1, kind="stable")
    return np.take_along_axis(part, order, 1), np.take_along_axis(idx, order, 1)


def select_anchors(index: Any, x: np.ndarray, queries: Queries, k: int, floor: float | None,
                   excluded: np.ndarray, allowed: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
    """Per class, up to ``k`` (pool row, score) pairs, best first; rows deduplicated across classes. Only
    ``allowed`` rows (default all) are searched: the rows the pair floor keeps."""
    search, n = restricted_search(index, x, allowed)
    n_classes = len(queries.per_class)
    n_excl = int((excluded if allowed is None else excluded & allowed).sum())
    fetch = min(n, 4 * k + n_excl)
    # A class whose pool neighbours all sit closer to other classes stays short; stop widening the search at
    # 64·k candidates per query instead of scanning a million-item pool.
    max_fetch = min(n, max(fetch, 64 * k + n_excl))
    while True:
        best: dict[int, tuple[float, int]] = {}   # row -> (score, class)
        per_class: list[dict[int, float]] = []
        for c, q in enumerate(queries.per_class):
            found: dict[int, float] = {}
            if len(q):
                scores, rows = search(q, fetch)
                for srow, rrow in zip(scores, rows, strict=True):
                    for s, r in zip(srow, rrow, strict=True):
                        r, s = int(r), float(s)
                        if r < 0 or excluded[r] or (floor is not None and s < floor):
                            continue
                        if s > found.get(r, -np.inf):
                            found[r] = s
            per_class.append(found)
            for r, s in found.items():
                if r not in best or s > best[r][0]:   # ties keep the lower class index
                    best[r] = (s, c)
        out = []
        for c in range(n_classes):
            mine = sorted(((r, s) for r, s in per_class[c].items() if best[r][1] == c), key=lambda t: (-t[1], t[0]))
            out.append(mine[:k])
        short = any(len(o) < k for o in out)
        if not short or fetch >= max_fetch:
            return out
        fetch = min(max_fetch, fetch * 2)


@dataclass
class RetrieveResult:
    path: Path
    n_anchors: int
    per_class: dict[str, int]
    n_excluded: int


def retrieve(cfg: RetrieveConfig, bundle: Any | None = None, images: ImageSet | None = None,
             exclude: list[ImageSet] | None = None) -> RetrieveResult:
    """Retrieve anchors for ``cfg.images`` from the pool embedded in ``cfg.emb`` (see the module docstring)."""
    import pyarrow as pa

    from arf.anchors.encode import load_bundle
    from arf.anchors.index import index_path, load_index
    from arf.anchors.pool import load_embeddings, load_info
    from arf.io import write_json, write_parquet

    if images is not None and not cfg.images:
        cfg.images = images.name
    cfg.validate()
    images = images or resolve_set(cfg.images, cfg.root)
    exclude = list(exclude or []) + [resolve_set(s, cfg.root) for s in cfg.exclude or []]
    if cfg.exclude is None:
        # A suite's finetuning set: its val and test sets are excluded without being named.
        exclude += suite_siblings(cfg.images, cfg.root)
    if cfg.classnames:
        import json

        images.classnames = json.loads(Path(cfg.classnames).read_text())
    if not images.classnames:
        raise ConfigError(f"classnames: the set {images.name} has no class names; pass --classnames <json list>")
    templates = None
    if cfg.templates:
        import json

        templates = json.loads(Path(cfg.templates).read_text())
    info = load_info(cfg.emb)
    bundle = load_bundle(bundle if bundle is not None else cfg.model, cfg.device)
    model_id = str(getattr(bundle, "model_id", cfg.model))
    if info["model"] != model_id:
        raise ArfError(f"the pool in {cfg.emb} was embedded with {info['model']}, not {model_id}; "
                       "embed it with this model or retrieve with that one")
    queries = STRATEGIES.get(cfg.strategy)(bundle, images, _templates(images, templates))
    x, meta = load_embeddings(cfg.emb, queries.modality)
    ipath = index_path(cfg.emb, queries.modality)
    index = None
    if ipath.is_file():
        index, infos = load_index(ipath)
        if infos["n"] != len(x) or infos["dim"] != x.shape[1]:
            log.warning("index %s covers %d x %d vectors, the pool has %d x %d: stale, searching exactly instead",
                        ipath, infos["n"], infos["dim"], len(x), x.shape[1])
            index = None
    if index is None:
        log.info("no index at %s: exact search over %d pool items", ipath, len(x))
    excluded = excluded_rows(meta, [images, *exclude])
    allowed, pair_floor, n_below = None, None, 0
    if cfg.pair_floor is not None:
        # The search modality's rows are loaded already; only the other tower's are read.
        other, _ = load_embeddings(cfg.emb, "text" if queries.modality == "image" else "image")
        cosine = pair_cosines(x, other)   # symmetric in its two towers
        below, pair_floor = below_pair_floor(cosine, meta.column("path").to_pylist(), cfg.pair_floor,
                                             cfg.pair_floor_paths)
        allowed, n_below = ~below, int(below.sum())
        log.info("pair floor %s = %.4f: %d of %d pool pairs below it are never retrieved", cfg.pair_floor,
                 pair_floor, n_below, len(x))
    chosen = select_anchors(index, x, queries, cfg.k, cfg.floor, excluded, allowed)

    rows = [(r, s, c) for c, lst in enumerate(chosen) for r, s in lst]
    take = [r for r, _, _ in rows]
    table = pa.table({
        "pool_id": meta.column("pool_id").take(take),
        "path": meta.column("path").take(take),
        "text": meta.column("text").take(take),
        "score": pa.array([s for _, s, _ in rows], pa.float32()),
        "query_class": pa.array([images.classnames[c] for _, _, c in rows], pa.string()),
        "query_label": pa.array([c for _, _, c in rows], pa.int32()),
    })
    out = Path(cfg.out) if cfg.out else Path(cfg.emb) / "anchors" / f"{images.name}-{cfg.strategy}-k{cfg.k}"
    write_parquet(out / ANCHORS_FILE, table)
    per_class = {images.classnames[c]: len(lst) for c, lst in enumerate(chosen)}
    write_json(out / SIDECAR_FILE, {
        "pool": info["source"], "pool_emb": str(Path(cfg.emb).resolve()), "model": model_id,
        "finetune_set": images.name, "classnames_hash": images.classnames_hash(), "n_classes": len(per_class),
        "strategy": cfg.strategy, "k": cfg.k, "floor": cfg.floor, "n_anchors": len(rows),
        "pair_floor": cfg.pair_floor, "pair_floor_paths": cfg.pair_floor_paths, "pair_floor_value": pair_floor,
        "n_below_pair_floor": n_below,
        "n_excluded_pool_items": int(excluded.sum()), "per_class": per_class,
        "index": str(ipath) if index is not None else None,
    })
    short = [c for c, n in per_class.items() if n < cfg.k]
    if short:
        log.warning("%d classes got fewer than k=%d anchors (floor/dedup/pool size), e.g. %s", len(short), cfg.k,
                    ", ".join(short[:5]))
    log.info("wrote %s: %d anchors for %d classes (%d pool items excluded as finetuning/test images)",
             out / ANCHORS_FILE, len(rows), len(per_class), int(excluded.sum()))
    return RetrieveResult(out / ANCHORS_FILE, len(rows), per_class, int(excluded.sum()))


def load_anchors(path: str | Path, *, model_id: str | None = None, set_name: str | None = None,
                 classnames: list[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """The anchor table and its sidecar; refuses anchors retrieved for another model or finetuning set."""
    import hashlib
    import json

    import pyarrow.parquet as pq

    from arf.io import read_json

    p = Path(path)
    if p.is_dir():
        p = p / ANCHORS_FILE
    side = p.with_name(SIDECAR_FILE)
    if not p.is_file() or not side.is_file():
        raise InputFileError(f"no anchor set at {p} (with {SIDECAR_FILE} beside it); run `arf retrieve`")
    meta = read_json(side)
    if model_id is not None and meta["model"] != model_id:
        raise ArfError(f"anchors {p} were retrieved with model {meta['model']}, not {model_id}")
    if set_name is not None and meta["finetune_set"] != set_name:
        raise ArfError(f"anchors {p} were retrieved for the set {meta['finetune_set']}, not {set_name}")
    if classnames is not None:
        h = hashlib.sha256(json.dumps(list(classnames)).encode()).hexdigest()[:16]
        if h != meta["classnames_hash"]:
            raise ArfError(f"anchors {p} were retrieved for other class names than these {len(classnames)}")
    return pq.read_table(p), meta


def show_anchors(path: str | Path, per_class: int = 3) -> dict[str, list[tuple[float, str]]]:
    """Per class, its ``per_class`` best (score, text) anchors."""
    table, _ = load_anchors(path)
    out: dict[str, list[tuple[float, str]]] = {}
    for cls, score, text in zip(table.column("query_class").to_pylist(), table.column("score").to_pylist(),
                                table.column("text").to_pylist(), strict=True):
        lst = out.setdefault(cls, [])
        if len(lst) < per_class:
            lst.append((round(score, 3), text))
    return out
