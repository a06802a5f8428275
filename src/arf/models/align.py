"""``arf base build``: contrastively align the EfficientNet-Lite0 and MiniLM towers into ``arf:mini-clip``.

CPU budget drives the design (the whole demo must fit in minutes on 2 cores):

1. Each image is pushed once (per augmented view) through the *frozen* early trunk (``blocks[:train_from_stage]``)
   and the activations are cached as fp16 shards; each distinct text goes once through the frozen MiniLM layers.
2. Training then only runs the unfrozen tail: the last trunk stage(s) + ``conv_head`` + the image projection, the
   last ``text_layers`` MiniLM layers (0 = frozen, mean-pooled features cached) + the text projection, and the
   temperature. BatchNorm statistics stay frozen (small batches of one domain would drift them).
3. Everything is keyed by sha256(corpus) + config: shards and a per-epoch training state are written atomically in
   ``<out>/.work``, so a rerun after ``kill -9`` continues where it stopped, and a finished build is a
   :func:`save_checkpoint` folder that ``create_model("arf:mini-clip")`` loads in seconds.

The result is a plain open_clip custom model (timm trunk + HF text tower), so it also loads in open_clip.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from arf.config import check, config_hash
from arf.errors import ArfError, InputFileError
from arf.images import BadImage, BadInputCounter, open_image
from arf.io import atomic_path, read_json, sha256_file, write_json
from arf.models.base import ClipBundle, eval_mode
from arf.models.provisional import CorpusPair
from arf.paths import data_dir, models_dir

log = logging.getLogger(__name__)

N_TRUNK_STAGES = 7


@dataclass
class BaseBuildConfig:
    """How ``arf:mini-clip`` is aligned; every field except ``workers``/``threads`` is part of the cache key."""

    # Defaults chosen by held-out-concept zero-shot on the provisional corpus (see docs in the report): a linear
    # head beat an MLP (18.3% vs 14.7% top-1 over 251 unseen classes), training the last trunk stage or the last
    # MiniLM layer added nothing measurable (15.5% vs 15.5%) at 2-3x the CPU time.
    image_size: int = 96  # vs 64 px on 4,000 images: line art 3.3 -> 10.0 %, 3D 12.0 -> 17.7 % (docs/DATA.md §4)
    embed_dim: int = 256
    proj: Literal["linear", "mlp"] = "linear"
    train_from_stage: int = 7  # trunk blocks[train_from_stage:] + conv_head are trained; earlier ones cached
    text_layers: int = 0  # last MiniLM layers trained (0: text tower frozen, pooled features cached)
    views: int = 3  # cached views per image: the plain render + (views - 1) augmented ones
    background_p: float = 0.5  # share of augmented views whose white background becomes a random colour
    epochs: int = 16
    batch_size: int = 256
    lr: float = 2e-3  # projections and temperature
    tower_lr: float = 3e-4  # unfrozen trunk blocks and text layers
    weight_decay: float = 0.05
    warmup_steps: int = 30
    init_logit_scale: float = math.log(1 / 0.07)
    seed: int = 0
    holdout_fraction: float = 0.15  # concepts held out for the zero-shot check (only pairs that carry a concept)
    max_images_per_concept: int | None = 3  # CPU budget: at most N images per concept (pairs carrying one)
    max_images: int | None = None  # CPU budget: a deterministic sample of at most N images (all their texts)
    max_pairs: int | None = None  # quick runs / tests: the first N pairs (deterministic order)
    threads: int = 2

    def validate(self) -> None:
        check(32 <= self.image_size <= 512, "image_size", f"must be in [32, 512], got {self.image_size}")
        check(1 <= self.train_from_stage <= N_TRUNK_STAGES, "train_from_stage",
              f"must be in [1, {N_TRUNK_STAGES}], got {self.train_from_stage}")
        check(0 <= self.text_layers <= 6, "text_layers", f"must be in [0, 6] (MiniLM has 6), got {self.text_layers}")
        check(self.views >= 1, "views", f"must be >= 1, got {self.views}")
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        check(self.batch_size >= 2, "batch_size", f"contrastive loss needs >= 2, got {self.batch_size}")
        check(self.lr > 0 and self.tower_lr >= 0, "lr", "learning rates must be positive")
        check(self.max_images_per_concept is None or self.max_images_per_concept >= 1, "max_images_per_concept",
              f"must be >= 1 or null, got {self.max_images_per_concept}")
        check(self.max_images is None or self.max_images >= 2, "max_images",
              f"must be >= 2 or null, got {self.max_images}")
        check(0 <= self.holdout_fraction < 1, "holdout_fraction", f"must be in [0, 1), got {self.holdout_fraction}")

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("threads")
        return d


@dataclass
class BuildResult:
    out_dir: Path
    seconds: float
    scores: dict[str, float] = field(default_factory=dict)
    provisional: bool = False


# ----------------------------------------------------------------------------------------------------------------
# corpus


def offline_alignment_path() -> Path | None:
    """The newest offline benchmark's ``alignment.parquet``, if ``arf data build`` has written one."""
    root = data_dir() / "offline"
    found = sorted(root.glob("*/alignment.parquet")) if root.is_dir() else []
    return found[-1] if found else None


def read_corpus(path: str | Path) -> list[CorpusPair]:
    """(path, text[, concept]) pairs from a parquet/CSV manifest; paths are relative to its folder."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"alignment corpus not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path).to_pydict()
    elif path.suffix == ".csv":
        import csv

        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        table = {k: [r[k] for r in rows] for k in (rows[0] if rows else {})}
    else:
        raise InputFileError(f"alignment corpus {path}: use a .parquet or .csv with columns path, text")
    for col in ("path", "text"):
        if col not in table:
            raise InputFileError(f"alignment corpus {path}: missing column {col!r}")
    concepts = table.get("classname") or [None] * len(table["path"])
    return [CorpusPair(str(path.parent / p), str(t), c or None)
            for p, t, c in zip(table["path"], table["text"], concepts, strict=True)]


def default_corpus() -> tuple[list[CorpusPair], bool]:
    """The offline benchmark's corpus if built, else the provisional one; returns (pairs, provisional)."""
    real = offline_alignment_path()
    if real is not None:
        log.info("alignment corpus: %s", real)
        return read_corpus(real), False
    from arf.models.provisional import provisional_corpus

    return provisional_corpus(), True


def corpus_sha256(pairs: Sequence[CorpusPair]) -> str:
    """Content hash of the corpus: image bytes and texts (paths may move, content may not)."""
    h = hashlib.sha256()
    for p in pairs:
        try:
            digest = sha256_file(p.path)
        except OSError:
            digest = "missing"
        h.update(f"{digest}\t{p.text}\t{p.concept or ''}\n".encode())
    return h.hexdigest()


def cap_images_per_concept(pairs: Sequence[CorpusPair], cap: int | None, seed: int) -> list[CorpusPair]:
    """Keep at most ``cap`` images per concept (a deterministic choice by file name), with all their texts.

    The corpus repeats each concept in several renders; past a few, more renders cost CPU time (each image goes
    through the early trunk) for little new signal, while more *concepts* is what zero-shot transfer needs.
    """
    if not cap:
        return list(pairs)
    by_concept: dict[str, set[str]] = {}
    for p in pairs:
        if p.concept is not None:
            by_concept.setdefault(p.concept, set()).add(p.path)

    def key(path: str) -> bytes:
        return hashlib.sha256(f"{seed}:{Path(path).parent.name}/{Path(path).name}".encode()).digest()

    keep = {path for paths in by_concept.values() for path in sorted(paths, key=key)[:cap]}
    return [p for p in pairs if p.concept is None or p.path in keep]


def sample_images(pairs: Sequence[CorpusPair], max_images: int | None, seed: int) -> list[CorpusPair]:
    """Keep the pairs of at most ``max_images`` images, chosen by a seeded hash of the file name (stable)."""
    paths = sorted({p.path for p in pairs})
    if not max_images or len(paths) <= max_images:
        return list(pairs)

    def key(path: str) -> bytes:
        return hashlib.sha256(f"{seed}:{Path(path).parent.name}/{Path(path).name}".encode()).digest()

    keep = set(sorted(paths, key=key)[:max_images])
    return [p for p in pairs if p.path in keep]


def split_holdout(pairs: Sequence[CorpusPair], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of training pairs and of pairs whose concept is held out (deterministic by concept name)."""
    if fraction <= 0:
        return list(range(len(pairs))), []
    train, held = [], []
    for i, p in enumerate(pairs):
        if p.concept is None:
            train.append(i)
            continue
        u = int.from_bytes(hashlib.sha256(f"{seed}:{p.concept}".encode()).digest()[:8], "little") / 2**64
        (held if u < fraction else train).append(i)
    return train, held


# ----------------------------------------------------------------------------------------------------------------
# frozen parts: early trunk and text layers


def early_trunk(trunk: torch.nn.Module, x: torch.Tensor, stage: int) -> torch.Tensor:
    h = trunk.bn1(trunk.conv_stem(x))
    for i in range(stage):
        h = trunk.blocks[i](h)
    return h


def tail_trunk(trunk: torch.nn.Module, h: torch.Tensor, stage: int) -> torch.Tensor:
    for i in range(stage, len(trunk.blocks)):
        h = trunk.blocks[i](h)
    h = trunk.bn2(trunk.conv_head(h))
    return trunk.global_pool(h).flatten(1)


def augment_view(img: Any, size: int, gen: torch.Generator, background_p: float = 0.5) -> Any:
    """A seeded augmented view: crop/flip, colour, greyscale, blur, or an outline (line-art-like) rendering.

    The finetuning and shift families differ from the corpus in colour, background, texture and line art; these
    views teach the projection that the *shape* carries the concept.
    """
    from PIL import ImageFilter, ImageOps
    from torchvision.transforms import functional as TF

    def u() -> float:
        return float(torch.rand((), generator=gen))

    w, h = img.size
    scale = 0.55 + 0.45 * u()
    cw, ch = max(8, int(w * math.sqrt(scale))), max(8, int(h * math.sqrt(scale)))
    left, top = int((w - cw) * u()), int((h - ch) * u())
    img = img.crop((left, top, left + cw, top + ch)).resize((size, size), resample=3)
    if u() < 0.5:
        img = ImageOps.mirror(img)
    r = u()
    if r < 0.15:  # outline drawing
        edges = ImageOps.invert(img.convert("L").filter(ImageFilter.FIND_EDGES))
        img = ImageOps.autocontrast(edges).convert("RGB")
    elif r < 0.35:
        img = ImageOps.grayscale(img).convert("RGB")
    if u() < background_p:  # coloured (often dark) background behind a white-backed icon, as in sticker sets
        from PIL import Image

        dark = u() < 0.5
        bg = tuple(int((90 if dark else 255) * u()) for _ in range(3))
        mask = ImageOps.invert(img.convert("L").point(lambda v: 255 if v > 245 else 0))
        img = Image.composite(img, Image.new("RGB", img.size, bg), mask)
    img = TF.adjust_brightness(img, 0.7 + 0.6 * u())
    img = TF.adjust_saturation(img, 0.5 + 1.0 * u())
    img = TF.adjust_hue(img, 0.1 * (u() - 0.5))
    if u() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(radius=0.5 + u()))
    return img


def _view_seed(seed: int, index: int, view: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}:{view}".encode()).digest()[:8], "little") % (2**63)


def cache_image_features(bundle: ClipBundle, paths: Sequence[str], cfg: BaseBuildConfig, work: Path,
                         shard_size: int = 512, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Early-trunk activations [views, N, C, H, W] (fp16) and a usable mask [N]; shards resume after a kill."""
    from safetensors.torch import load_file, save_file

    trunk = bundle.model.visual.trunk
    norm = bundle.preprocess_val.transforms[-1]  # Normalize(mean, std)
    from torchvision.transforms import functional as TF

    counter = BadInputCounter("base build images", max_bad_fraction=0.05)
    n = len(paths)
    feats: list[list[torch.Tensor]] = [[] for _ in range(cfg.views)]
    oks: list[torch.Tensor] = []
    t0 = time.time()
    for s0 in range(0, n, shard_size):
        shard = work / f"img_{s0 // shard_size:05d}.safetensors"
        if shard.is_file():
            d = load_file(str(shard))
        else:
            idx = range(s0, min(n, s0 + shard_size))
            ok = torch.ones(len(idx), dtype=torch.bool)
            views: list[list[torch.Tensor]] = [[] for _ in range(cfg.views)]
            for j, i in enumerate(idx):
                try:
                    img = open_image(paths[i])
                    counter.ok()
                except BadImage as e:
                    counter.skip(paths[i], e.reason)
                    ok[j] = False
                    img = None
                for v in range(cfg.views):
                    if img is None:
                        views[v].append(torch.zeros(3, cfg.image_size, cfg.image_size))
                        continue
                    if v == 0:
                        im = img.resize((cfg.image_size, cfg.image_size), resample=3)
                    else:
                        gen = torch.Generator().manual_seed(_view_seed(cfg.seed, i, v))
                        im = augment_view(img, cfg.image_size, gen, cfg.background_p)
                    views[v].append(norm(TF.to_tensor(im.convert("RGB"))))
            d = {"ok": ok}
            # Eval mode: batch-norm uses (and keeps) the pretrained running statistics. In train mode every
            # batch was normalised by its own statistics and the running ones drifted with each cached batch, so
            # the saved trunk differed between an uninterrupted build and a resumed one (whose shards come from
            # disk without a forward pass), and cached features differed from what the model computes at use.
            with eval_mode(trunk), torch.inference_mode():
                for v in range(cfg.views):
                    x = torch.stack(views[v])
                    out = [early_trunk(trunk, x[b:b + batch_size], cfg.train_from_stage)
                           for b in range(0, len(x), batch_size)]
                    d[f"view{v}"] = torch.cat(out).half()
            with atomic_path(shard) as tmp:
                save_file(d, str(tmp))
            done = min(n, s0 + shard_size)
            log.info("cached early-trunk features for %d/%d images (%.0f s)", done, n, time.time() - t0)
        oks.append(d["ok"])
        for v in range(cfg.views):
            feats[v].append(d[f"view{v}"])
    counter.check()
    return torch.stack([torch.cat(f) for f in feats]), torch.cat(oks)


def _text_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Additive [B, 1, 1, L] mask, the form every BERT attention implementation in transformers accepts.
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def text_tail(bundle: ClipBundle, hidden: torch.Tensor, mask: torch.Tensor, layers: int) -> torch.Tensor:
    """Run the last ``layers`` MiniLM layers on cached hidden states, then open_clip's mean pooler."""
    enc = bundle.model.text.transformer.encoder
    add = _text_mask(mask, hidden.dtype)
    for layer in enc.layer[len(enc.layer) - layers:]:
        out = layer(hidden, add)
        hidden = out[0] if isinstance(out, tuple) else out
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1)


def cache_text_features(bundle: ClipBundle, texts: Sequence[str], cfg: BaseBuildConfig, work: Path,
                        batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Frozen MiniLM features per distinct text: hidden states before the trained layers (+ mask), or pooled."""
    from safetensors.torch import load_file, save_file

    path = work / "text.safetensors"
    if path.is_file():
        return load_file(str(path))
    tr = bundle.model.text.transformer
    n_layers = len(tr.encoder.layer)
    hidden, masks, pooled = [], [], []
    t0 = time.time()
    # Frozen features must be the tower's function of the text: in train mode MiniLM's dropout made them random
    # (two builds of one config differed by up to 0.88 per feature, and so did the bases; docs/BENCHMARKS.md).
    with eval_mode(tr), torch.inference_mode():
        for b in range(0, len(texts), batch_size):
            tok = bundle.tokenizer(list(texts[b:b + batch_size]))
            mask = (tok != bundle.model.text.config.pad_token_id).long()
            width = int(mask.sum(1).max())
            tok, mask = tok[:, :width], mask[:, :width]
            out = tr(input_ids=tok, attention_mask=mask, output_hidden_states=True)
            if cfg.text_layers:
                h = out.hidden_states[n_layers - cfg.text_layers]
                pad = bundle.tokenizer.context_length - width
                hidden.append(F.pad(h, (0, 0, 0, pad)).half())
                masks.append(F.pad(mask, (0, pad)).bool())
            else:
                m = mask.unsqueeze(-1).float()
                pooled.append((out.last_hidden_state * m).sum(1) / m.sum(1))
    d = {"hidden": torch.cat(hidden), "mask": torch.cat(masks)} if cfg.text_layers else {"pooled": torch.cat(pooled)}
    with atomic_path(path) as tmp:
        save_file(d, str(tmp))
    log.info("cached MiniLM features for %d texts (%.0f s)", len(texts), time.time() - t0)
    return d


# ----------------------------------------------------------------------------------------------------------------
# training


def trainable_modules(bundle: ClipBundle, cfg: BaseBuildConfig) -> tuple[list[torch.nn.Module], list[torch.nn.Module]]:
    """(projection-like modules at ``lr``, tower modules at ``tower_lr``); everything else is frozen."""
    m = bundle.model
    trunk = m.visual.trunk
    tower = [trunk.blocks[i] for i in range(cfg.train_from_stage, len(trunk.blocks))] + [trunk.conv_head, trunk.bn2]
    if cfg.text_layers:
        enc = m.text.transformer.encoder
        tower += list(enc.layer[len(enc.layer) - cfg.text_layers:])
    return [m.visual.head, m.text.proj], tower


def _state_keys(bundle: ClipBundle, cfg: BaseBuildConfig) -> list[str]:
    heads, tower = trainable_modules(bundle, cfg)
    ids = {id(p) for mod in heads + tower for p in list(mod.parameters()) + list(mod.buffers())}
    ids.add(id(bundle.model.logit_scale))
    named = dict(bundle.model.named_parameters()) | dict(bundle.model.named_buffers())
    return sorted(k for k, v in named.items() if id(v) in ids)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every pair sharing the image or the text counts as a positive (soft targets)."""
    logits = scale * img @ txt.t()
    target = same.float() / same.float().sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-target.t() * F.log_softmax(logits.t(), 1), 1).mean())


def _lr_at(step: int, total: int, warmup: int) -> float:
    # linear warmup, then cosine to zero (nanoGPT-style)
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def train_alignment(bundle: ClipBundle, img_feats: torch.Tensor, img_ok: torch.Tensor, pair_img: torch.Tensor,
                    text_data: dict[str, torch.Tensor], pair_txt: torch.Tensor, train_idx: Sequence[int],
                    cfg: BaseBuildConfig, work: Path) -> None:
    """Train the unfrozen tail; resumable per epoch from ``work/train_state.pt``."""
    model = bundle.model
    for p in model.parameters():
        p.requires_grad_(False)
    heads, tower = trainable_modules(bundle, cfg)
    for mod in heads + tower:
        for p in mod.parameters():
            p.requires_grad_(True)
    model.logit_scale.requires_grad_(True)
    model.eval()  # frozen BN statistics; dropout off (cached features are the only noise we want)

    def groups(mods: list[torch.nn.Module], lr: float) -> list[dict[str, Any]]:
        ps = [p for mod in mods for p in mod.parameters()]
        # weight decay only on matrices / kernels (nanoGPT's p.dim() >= 2 rule)
        return [{"params": [p for p in ps if p.dim() >= 2], "lr": lr, "weight_decay": cfg.weight_decay, "base": lr},
                {"params": [p for p in ps if p.dim() < 2], "lr": lr, "weight_decay": 0.0, "base": lr}]

    param_groups = groups(heads, cfg.lr) + groups(tower, cfg.tower_lr)
    param_groups.append({"params": [model.logit_scale], "lr": cfg.lr, "weight_decay": 0.0, "base": cfg.lr})
    opt = torch.optim.AdamW(param_groups, betas=(0.9, 0.98), eps=1e-6)

    keep = torch.tensor([i for i in train_idx if bool(img_ok[pair_img[i]])], dtype=torch.long)
    if len(keep) < 2:
        raise ArfError(f"alignment corpus has {len(keep)} usable pairs; need at least 2")
    steps_per_epoch = max(1, math.ceil(len(keep) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    state_path = work / "train_state.pt"
    start_epoch = 0
    with torch.no_grad():
        model.logit_scale.fill_(cfg.init_logit_scale)
    if state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"], strict=False)
        opt.load_state_dict(st["opt"])
        start_epoch = int(st["epoch"])
        log.info("resuming alignment at epoch %d/%d", start_epoch, cfg.epochs)
    keys = _state_keys(bundle, cfg)

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = keep[torch.randperm(len(keep), generator=gen)]
        view = torch.randint(0, img_feats.shape[0], (len(order),), generator=gen)
        total_loss = 0.0
        for s in range(steps_per_epoch):
            step = epoch * steps_per_epoch + s
            for g in opt.param_groups:
                g["lr"] = g["base"] * _lr_at(step, total, cfg.warmup_steps)
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            if len(idx) < 2:
                continue
            ii, tt = pair_img[idx], pair_txt[idx]
            x = img_feats[view[s * cfg.batch_size:(s + 1) * cfg.batch_size], ii].float()
            fi = model.visual.head(tail_trunk(model.visual.trunk, x, cfg.train_from_stage))
            if cfg.text_layers:
                h, m = text_data["hidden"][tt].float(), text_data["mask"][tt]
                width = int(m.sum(1).max())
                pooled = text_tail(bundle, h[:, :width], m[:, :width], cfg.text_layers)
            else:
                pooled = text_data["pooled"][tt]
            ft = model.text.proj(pooled)
            same = (ii[:, None] == ii[None, :]) | (tt[:, None] == tt[None, :])
            loss = clip_loss(F.normalize(fi, dim=-1), F.normalize(ft, dim=-1), model.logit_scale.exp(), same)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            total_loss += loss.item()
        log.info("align epoch %d/%d: loss %.3f, scale %.1f (%.1f s)", epoch + 1, cfg.epochs,
                 total_loss / steps_per_epoch, model.logit_scale.exp().item(), time.time() - t0)
        sd = model.state_dict()
        with atomic_path(state_path) as tmp:
            torch.save({"model": {k: sd[k] for k in keys}, "opt": opt.state_dict(), "epoch": epoch + 1}, tmp)
    for p in model.parameters():
        p.requires_grad_(True)


# ----------------------------------------------------------------------------------------------------------------
# evaluation on held-out concepts (until the offline benchmark's suite exists)


@torch.no_grad()
def heldout_scores(bundle: ClipBundle, pairs: Sequence[CorpusPair], train_idx: Sequence[int],
                   held_idx: Sequence[int], img_feats: torch.Tensor, img_ok: torch.Tensor,
                   pair_img: torch.Tensor, cfg: BaseBuildConfig, max_seen: int = 200) -> dict[str, float]:
    """Zero-shot top-1 on held-out concepts and on (a slice of) trained ones, plain and augmented views."""
    from arf.models.provisional import TEMPLATES

    model = bundle.model
    model.eval()
    scores: dict[str, float] = {}

    def run(name: str, idx: Sequence[int]) -> None:
        by_img = {}
        for i in idx:
            if bool(img_ok[pair_img[i]]) and pairs[i].concept is not None:
                by_img.setdefault(int(pair_img[i]), pairs[i].concept)
        if not by_img:
            return
        classes = sorted(set(by_img.values()))
        toks = bundle.tokenizer([t.format(c) for c in classes for t in TEMPLATES])
        txt = F.normalize(model.encode_text(toks), dim=-1).view(len(classes), len(TEMPLATES), -1).mean(1)
        txt = F.normalize(txt, dim=-1)
        imgs = torch.tensor(list(by_img))
        labels = torch.tensor([classes.index(c) for c in by_img.values()])
        for v in range(img_feats.shape[0]):
            fi = model.visual.head(tail_trunk(model.visual.trunk, img_feats[v, imgs].float(), cfg.train_from_stage))
            pred = (F.normalize(fi, dim=-1) @ txt.t()).argmax(1)
            tag = "plain" if v == 0 else "augmented"
            scores[f"{name} ({len(classes)} classes, {tag})"] = 100.0 * float((pred == labels).float().mean())
            if v == 1:
                break

    run("held-out concepts", held_idx)
    seen_concepts = sorted({pairs[i].concept for i in train_idx if pairs[i].concept is not None})[:max_seen]
    keep = set(seen_concepts)
    run("trained concepts", [i for i in train_idx if pairs[i].concept in keep])
    return scores


# ----------------------------------------------------------------------------------------------------------------
# the build


# Bumped when the build's code changes what it produces for the same config and corpus, so a base built by older
# code is never served as this one. 2: the cached text and early-trunk features are computed in eval mode (revision
# 1 ran MiniLM with dropout and batch-norm with batch statistics while caching; builds were not reproducible).
BUILD_REVISION = 2


def build_dir(corpus_sha: str, cfg: BaseBuildConfig) -> Path:
    return models_dir() / f"mini-clip-{config_hash(corpus_sha, {**cfg.identity(), 'revision': BUILD_REVISION})}"


def build_base(pairs: Sequence[CorpusPair] | None = None, cfg: BaseBuildConfig | None = None, *,
               provisional: bool | None = None, set_default: bool = True, force: bool = False,
               evaluate: Callable[[ClipBundle], dict[str, float]] | None = None) -> BuildResult:
    """Align the towers on ``pairs`` (default: the offline corpus, else the provisional one) and save the base.

    Skipped (returns the cached folder) when a finished build with the same corpus + config exists, unless
    ``force``. ``set_default`` makes it what ``create_model("arf:mini-clip")`` loads.
    """
    from arf.models.checkpoint import save_checkpoint
    from arf.models.mini_clip import POINTER, mini_clip_towers

    cfg = cfg or BaseBuildConfig()
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    if pairs is None:
        pairs, provisional = default_corpus()
    provisional = bool(provisional)
    pairs = list(pairs)[: cfg.max_pairs] if cfg.max_pairs else list(pairs)
    n_all = len(pairs)
    pairs = sample_images(cap_images_per_concept(pairs, cfg.max_images_per_concept, cfg.seed), cfg.max_images,
                          cfg.seed)
    if len(pairs) < n_all:
        log.info("max_images_per_concept=%s, max_images=%s: aligning on %d of %d pairs",
                 cfg.max_images_per_concept, cfg.max_images, len(pairs), n_all)
    if not pairs:
        raise ArfError("alignment corpus is empty")
    sha = corpus_sha256(pairs)
    out = build_dir(sha, cfg)
    work = out / ".work"
    if (out / "arf.json").is_file() and not force:
        log.info("arf:mini-clip already built for this corpus and config: %s", out)
        if set_default:
            write_json(models_dir() / POINTER, {"dir": out.name})
        meta = read_json(out / "arf.json")
        return BuildResult(out, 0.0, meta.get("scores", {}), meta.get("provisional", False))
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / "build.json", {"config": cfg.identity(), "corpus_sha256": sha, "pairs": len(pairs),
                                     "provisional": provisional})
    if provisional:
        log.warning("building arf:mini-clip on a PROVISIONAL corpus (%d pairs)", len(pairs))

    bundle = mini_clip_towers(image_size=cfg.image_size, embed_dim=cfg.embed_dim, seed=cfg.seed, proj=cfg.proj)
    with torch.no_grad():
        bundle.model.logit_scale.fill_(cfg.init_logit_scale)

    images = sorted({p.path for p in pairs})
    img_index = {p: i for i, p in enumerate(images)}
    texts = sorted({p.text for p in pairs})
    txt_index = {t: i for i, t in enumerate(texts)}
    pair_img = torch.tensor([img_index[p.path] for p in pairs])
    pair_txt = torch.tensor([txt_index[p.text] for p in pairs])
    train_idx, held_idx = split_holdout(pairs, cfg.holdout_fraction, cfg.seed)

    img_feats, img_ok = cache_image_features(bundle, images, cfg, work)
    text_data = cache_text_features(bundle, texts, cfg, work)
    t_train = time.time()
    train_alignment(bundle, img_feats, img_ok, pair_img, text_data, pair_txt, train_idx, cfg, work)
    log.info("alignment training took %.0f s", time.time() - t_train)

    scores = heldout_scores(bundle, pairs, train_idx, held_idx, img_feats, img_ok, pair_img, cfg)
    bundle.model_id = "arf:mini-clip"
    if evaluate is not None:
        scores.update(evaluate(bundle))
    seconds = time.time() - t_start
    save_checkpoint(bundle, out, extra={"provisional": provisional, "corpus_sha256": sha, "scores": scores,
                                        "build_config": cfg.identity(), "build_revision": BUILD_REVISION,
                                        "build_seconds": round(seconds, 1),
                                        "pairs": len(pairs), "heldout_pairs": len(held_idx)})
    if set_default:
        write_json(models_dir() / POINTER, {"dir": out.name})
    # caches are only needed to resume an unfinished build; another process may have finished the same build
    shutil.rmtree(work, ignore_errors=True)
    return BuildResult(out, seconds, scores, provisional)
