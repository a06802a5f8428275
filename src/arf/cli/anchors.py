"""CLI of the anchor stages: ``arf caption``, ``arf pool embed``, ``arf pool index``, ``arf retrieve``.

Every flag maps onto a field of the stage's config dataclass (``arf.anchors.config``); ``--config file.yaml`` and
``--set field=value`` give the same fields from a file or for fields without a flag.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

log = logging.getLogger("arf.anchors")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with the stage's config fields")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any config field (repeatable)")


def _load(cls: type, args: argparse.Namespace, flags: dict[str, str]) -> Any:
    """Config = defaults < --config < flags < --set; flag values are taken as typed (never re-parsed as YAML)."""
    from pathlib import Path

    import yaml

    from arf.config import from_dict, parse_overrides
    from arf.errors import ConfigError

    data: dict[str, Any] = {}
    if args.config:
        p = Path(args.config)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
    for field, attr in flags.items():
        value = getattr(args, attr, None)
        if value is not None:
            data[field] = value
    data.update(parse_overrides(list(args.overrides)))
    cfg = from_dict(cls, data)
    cfg.validate()
    return cfg


def _caption(args: argparse.Namespace) -> int:
    from arf.anchors.caption import run_caption, show_captions
    from arf.anchors.config import CaptionConfig

    cfg = _load(CaptionConfig, args, {
        "images": "images", "root": "root", "out": "out", "captioner": "captioner", "model": "model",
        "corpus": "corpus", "prompt": "prompt", "batch_size": "batch_size", "chunk_size": "chunk_size",
        "device": "device", "top_m": "top_m", "margin": "margin",
    })
    result = run_caption(cfg)
    print(f"captions: {result.path} ({result.n_captions} images, {result.n_skipped} skipped, "
          f"{result.images_per_s:.2f} images/s this run, captioner {result.captioner})")
    if args.show:
        for image_id, cap in show_captions(result.path, args.show):
            print(f"  {image_id}: {cap}")
    return 0


def _pool_embed(args: argparse.Namespace) -> int:
    from arf.anchors.config import PoolConfig
    from arf.anchors.pool import embed_pool

    cfg = _load(PoolConfig, args, {
        "source": "source", "out": "out", "root": "root", "model": "model", "shard_size": "shard_size",
        "batch_size": "batch_size", "num_workers": "workers", "shard": "shard", "device": "device", "dtype": "dtype",
    })
    r = embed_pool(cfg)
    print(f"pool embed: {r.shards_done} shards ({r.pairs} pairs, {r.skipped} bad images skipped) at "
          f"{r.pairs_per_s:.1f} pairs/s; {'complete' if r.complete else 'other shards still to do'}: {r.out}")
    return 0


def _pool_index(args: argparse.Namespace) -> int:
    from arf.anchors.config import IndexConfig
    from arf.anchors.index import build_pool_index

    cfg = _load(IndexConfig, args, {
        "emb": "emb", "out": "out", "modality": "modality", "kind": "kind", "max_memory_gb": "max_memory_gb",
        "exact_below": "exact_below", "target_recall": "target_recall",
    })
    for modality, info in build_pool_index(cfg).items():
        print(f"{modality}: {info.factory} over {info.n} x {info.dim}, built in {info.build_time_s:.2f}s, "
              f"recall@{info.recall_k}={info.recall:.3f}" + (f" at {info.search_param}={info.search_value}"
                                                            if info.search_param else ""))
    return 0


def _pair_floor(value: str) -> float | str:
    if value == "median":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give a cosine similarity or 'median'") from None


def _retrieve(args: argparse.Namespace) -> int:
    from arf.anchors.config import RetrieveConfig
    from arf.anchors.retrieve import retrieve, show_anchors

    cfg = _load(RetrieveConfig, args, {
        "emb": "emb", "images": "images", "exclude": "exclude", "root": "root", "out": "out", "model": "model",
        "strategy": "strategy", "k": "k", "floor": "floor", "pair_floor": "pair_floor",
        "pair_floor_paths": "pair_floor_paths", "classnames": "classnames", "templates": "templates",
        "device": "device",
    })
    r = retrieve(cfg)
    print(f"anchors: {r.path} ({r.n_anchors} for {len(r.per_class)} classes; "
          f"{r.n_excluded} pool items excluded as finetuning/test images)")
    if args.show:
        for cls, items in show_anchors(r.path, args.show).items():
            print(f"  {cls}:")
            for score, text in items:
                print(f"    {score:.3f}  {text}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands."""
    p = sub.add_parser("caption", help="caption anchors: one caption per finetuning image (resumable)")
    p.add_argument("--images", help="finetuning set: image folder, parquet/CSV manifest, or suite:<suite>/<set>")
    p.add_argument("--root", help="folder the manifest's paths are relative to")
    p.add_argument("--out", help="output folder (default: <set root>/captions/<set>-<captioner>)")
    p.add_argument("--captioner", help="hf:<id-or-dir> | retrieval[:<corpus>] | file:<parquet/csv> (default retrieval)")
    p.add_argument("--model", help="base CLIP for the retrieval captioner (default arf:mini-clip)")
    p.add_argument("--corpus", help="caption corpus for `retrieval` (alignment or pool texts; never test sets)")
    p.add_argument("--prompt", help="text prompt for hf captioners")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--chunk-size", type=int, help="images per resumable chunk")
    p.add_argument("--top-m", type=int, help="retrieval captioner: texts composed per caption")
    p.add_argument("--margin", type=float, help="retrieval captioner: similarity margin below the best text")
    p.add_argument("--device")
    p.add_argument("--show", type=int, default=0, metavar="N", help="print N captions after the run")
    _common(p)
    p.set_defaults(func=_caption)

    pool = sub.add_parser("pool", help="candidate pool for retrieved anchors: embed, index")
    psub = pool.add_subparsers(dest="pool_command", metavar="{embed,index}", required=True)
    e = psub.add_parser("embed", help="embed pool images and texts with the base model (sharded, resumable)")
    e.add_argument("--source", help="pool.parquet / CSV manifest / webdataset .tar shard or folder of shards")
    e.add_argument("--out", help="embedding folder")
    e.add_argument("--root", help="folder the manifest's paths are relative to (default: its folder)")
    e.add_argument("--model", help="base model id or checkpoint (default arf:mini-clip)")
    e.add_argument("--shard-size", type=int, help="pairs per output shard")
    e.add_argument("--batch-size", type=int)
    e.add_argument("--workers", type=int, help="DataLoader workers decoding images")
    e.add_argument("--shard", help="i/n: embed only shards i, i+n, ... (default from torchrun RANK/WORLD_SIZE)")
    e.add_argument("--device")
    e.add_argument("--dtype", choices=["float16", "float32"])
    _common(e)
    e.set_defaults(func=_pool_embed)
    x = psub.add_parser("index", help="FAISS index over the pool embeddings, with an infos JSON")
    x.add_argument("--emb", help="embedding folder from `arf pool embed`")
    x.add_argument("--out", help="index folder (default <emb>/index)")
    x.add_argument("--modality", choices=["image", "text", "both"])
    x.add_argument("--kind", help="auto | flat | ivf | ivfpq | hnsw")
    x.add_argument("--max-memory-gb", type=float)
    x.add_argument("--exact-below", type=int, help="auto: pools smaller than this get an exact index")
    x.add_argument("--target-recall", type=float)
    _common(x)
    x.set_defaults(func=_pool_index)

    r = sub.add_parser("retrieve", help="retrieved anchors: top-k pool pairs per class of the finetuning set")
    r.add_argument("--emb", help="pool embedding folder (its index/ is used when present)")
    r.add_argument("--images", help="finetuning set spec; its images are never retrieved")
    r.add_argument("--exclude", action="append", help="set spec whose images are never retrieved (repeatable)")
    r.add_argument("--root")
    r.add_argument("--out", help="output folder for anchors.parquet + anchors.json")
    r.add_argument("--model")
    r.add_argument("--strategy", help="text2image (default) | image2image | text2text")
    r.add_argument("--k", type=int, help="anchors per class")
    r.add_argument("--floor", type=float, help="minimum cosine similarity")
    r.add_argument("--pair-floor", type=_pair_floor,
                   help="never retrieve pool pairs whose own image-text cosine is below this (LAION's CLIP-score "
                        "filter); 'median' = the median of the pairs outside --pair-floor-paths")
    r.add_argument("--pair-floor-paths", metavar="GLOB",
                   help="fnmatch glob of the pool paths the pair floor applies to (default: every pair)")
    r.add_argument("--classnames", help="JSON list of class names (if the set has none)")
    r.add_argument("--templates", help="JSON list of prompt templates")
    r.add_argument("--device")
    r.add_argument("--show", type=int, default=0, metavar="N", help="print N retrieved texts per class")
    _common(r)
    r.set_defaults(func=_retrieve)
