"""Config dataclasses of the anchor stages: captioning (TCAG), pool embedding, indexing and retrieval (ITAR).

Each ``validate()`` raises :class:`ConfigError` naming the bad field and what is allowed, before any heavy work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from arf.config import check


def _check_captioner_spec(spec: str, field: str) -> None:
    from arf.anchors.captioners import CAPTIONERS

    name = spec.split(":", 1)[0]
    CAPTIONERS.get(name)  # raises "unknown captioner 'x'; choose from ..."
    if name in ("hf", "file"):
        check(":" in spec and spec.split(":", 1)[1] != "", field, f"{name!r} needs an argument, e.g. '{name}:<path>'")


@dataclass
class CaptionConfig:
    """``arf caption``: one caption per image of the finetuning set, written in resumable chunks."""

    images: str = ""                 # set spec: image folder, parquet/CSV with a `path` column, or suite:<suite>/<set>
    root: str | None = None          # folder the `path` column is relative to (default: found beside the manifest)
    out: str | None = None           # output folder (default: <set root>/captions/<captioner slug>)
    captioner: str = "retrieval"     # hf:<id-or-dir> | retrieval[:<corpus>] | file:<parquet/csv>
    model: str = "arf:mini-clip"     # base CLIP for the retrieval captioner
    corpus: str | None = None        # caption corpus for `retrieval` (default: the offline alignment corpus)
    prompt: str | None = None        # text prompt for hf captioners (BLIP "a picture of", BLIP-2 "Question: ...")
    max_new_tokens: int = 30
    top_m: int = 3                   # retrieval captioner: at most this many corpus texts are composed
    margin: float = 0.05             # retrieval captioner: keep texts within `margin` cosine of the best
    batch_size: int = 32
    chunk_size: int = 256            # images per atomic chunk file: at most this much work is lost on kill -9
    device: str = "cpu"
    max_bad_fraction: float = 0.05

    def validate(self) -> None:
        check(bool(self.images), "images", "give the finetuning set (folder, parquet/CSV manifest or suite:<s>/<set>)")
        _check_captioner_spec(self.captioner, "captioner")
        check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        check(self.chunk_size > 0, "chunk_size", f"must be > 0, got {self.chunk_size}")
        check(self.top_m > 0, "top_m", f"must be > 0, got {self.top_m}")
        check(self.margin >= 0, "margin", f"must be >= 0, got {self.margin}")
        check(self.max_new_tokens > 0, "max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        check(0 <= self.max_bad_fraction <= 1, "max_bad_fraction", f"must be in [0, 1], got {self.max_bad_fraction}")


@dataclass
class PoolConfig:
    """``arf pool embed``: embed a candidate pool with the base model's image and text towers."""

    source: str = ""                 # pool.parquet / CSV manifest / webdataset shards ("dir" or "a-{000..009}.tar")
    out: str = ""                    # embedding folder: img_emb/, text_emb/, metadata/, done/
    root: str | None = None          # folder a manifest's paths are relative to (default: the manifest's folder)
    model: str = "arf:mini-clip"
    shard_size: int = 10_000         # pairs per output shard (the unit of resumption and of splitting)
    batch_size: int = 64
    num_workers: int = 0             # DataLoader workers that decode + preprocess (the "reader")
    shard: str | None = None         # "i/n": this process embeds shards i, i+n, ... (default: torchrun RANK/WORLD_SIZE)
    device: str = "cpu"
    dtype: str = "float16"           # stored embedding dtype (float16 halves the disk; search casts to float32)
    max_bad_fraction: float = 0.05
    progress: bool = True

    def validate(self) -> None:
        check(bool(self.source), "source", "give the pool (parquet/CSV manifest or webdataset shards)")
        check(bool(self.out), "out", "give the output folder")
        check(self.shard_size > 0, "shard_size", f"must be > 0, got {self.shard_size}")
        check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        check(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        check(self.dtype in ("float16", "float32"), "dtype", f"{self.dtype!r}; choose from float16, float32")
        check(0 <= self.max_bad_fraction <= 1, "max_bad_fraction", f"must be in [0, 1], got {self.max_bad_fraction}")
        if self.shard is not None:
            parse_shard(self.shard)


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with 0 <= i < n."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        check(False, "shard", f"{spec!r} must look like i/n, e.g. 0/4")
    check(n > 0 and 0 <= i < n, "shard", f"{spec!r}: need 0 <= i < n")
    return i, n


@dataclass
class IndexConfig:
    """``arf pool index``: FAISS index over pool embeddings, exact or approximate by size and memory budget."""

    emb: str = ""                    # embedding folder written by `arf pool embed`
    out: str | None = None           # default: <emb>/index
    modality: str = "both"           # image | text | both
    kind: str = "auto"               # auto | flat | ivf | ivfpq | hnsw
    exact_below: int = 100_000       # auto: pools smaller than this get an exact IndexFlatIP
    max_memory_gb: float = 16.0      # auto: IVF-Flat if the vectors fit, else IVF-PQ sized to the budget
    target_recall: float = 0.97      # nprobe / efSearch is raised until recall@k on a sample reaches this
    recall_k: int = 50               # retrieval asks for top-4k candidates per class; tune recall at this depth
    recall_queries: int = 500
    seed: int = 0

    def validate(self) -> None:
        check(bool(self.emb), "emb", "give the embedding folder written by `arf pool embed`")
        check(self.modality in ("image", "text", "both"), "modality",
              f"{self.modality!r}; choose from image, text, both")
        check(self.kind in INDEX_KINDS, "kind", f"{self.kind!r}; choose from {', '.join(INDEX_KINDS)}")
        check(self.exact_below >= 0, "exact_below", f"must be >= 0, got {self.exact_below}")
        check(self.max_memory_gb > 0, "max_memory_gb", f"must be > 0, got {self.max_memory_gb}")
        check(0 < self.target_recall <= 1, "target_recall", f"must be in (0, 1], got {self.target_recall}")
        check(self.recall_k > 0, "recall_k", f"must be > 0, got {self.recall_k}")
        check(self.recall_queries > 0, "recall_queries", f"must be > 0, got {self.recall_queries}")


INDEX_KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")


@dataclass
class RetrieveConfig:
    """``arf retrieve``: top-k pool pairs per class of the finetuning set, written as an anchor set."""

    emb: str = ""                    # pool embedding folder (with index/ from `arf pool index`, else exact search)
    images: str = ""                 # finetuning set spec (as CaptionConfig.images); never retrievable
    exclude: list[str] | None = None  # more set specs whose images may never be retrieved (the test sets)
    root: str | None = None
    out: str | None = None           # default: <emb>/anchors/<set>-<strategy>-k<k>
    model: str = "arf:mini-clip"
    strategy: str = "text2image"
    k: int = 100                     # anchors per class
    floor: float | None = None       # drop candidates with cosine similarity below this
    # LAION's CLIP-score filter on the pool's own pairs: a pair whose image–text cosine under `model` is below this is
    # never retrieved. "median": the median cosine of the pairs outside `pair_floor_paths` (the ones you trust), so
    # the floor follows the model rather than being a number tuned for one (docs/RESULTS.md §2, eighteenth session).
    pair_floor: float | Literal["median"] | None = None
    pair_floor_paths: str | None = None  # fnmatch glob: the pool paths the pair floor applies to (default: all)
    classnames: str | None = None    # JSON list of class names (when the set spec carries none)
    templates: str | None = None     # JSON list of prompt templates with "{}" (default: "a photo of a {}.")
    batch_size: int = 64
    device: str = "cpu"

    def validate(self) -> None:
        from arf.anchors.retrieve import STRATEGIES

        check(bool(self.emb), "emb", "give the pool embedding folder written by `arf pool embed`")
        check(bool(self.images), "images", "give the finetuning set (its images are never retrieved)")
        STRATEGIES.get(self.strategy)
        check(self.k > 0, "k", f"must be > 0, got {self.k}")
        if self.floor is not None:
            check(0.0 <= self.floor <= 1.0, "floor", f"must be a cosine similarity in [0, 1], got {self.floor}")
        if isinstance(self.pair_floor, float):
            check(-1.0 <= self.pair_floor <= 1.0, "pair_floor",
                  f"must be a cosine similarity in [-1, 1] or 'median', got {self.pair_floor}")
        check(self.pair_floor != "median" or bool(self.pair_floor_paths), "pair_floor_paths",
              "pair_floor 'median' is the median of the pairs outside pair_floor_paths: give the glob of the pairs "
              "to filter")
        check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
