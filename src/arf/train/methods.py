"""Finetuning methods: ``zeroshot``, ``lp``, ``ft``, ``lpft``, ``flyp``, ``arf``, ``arf-ft``, ``arf-lpft`` (one
registry, one trainer).

A method decides which parameters train in which phase, what a step's forward pass encodes and which losses it
returns (a dict of named rank losses plus ``loss``, their weighted sum). Everything trainable lives in one
:class:`TrainModule` (the CLIP model and, for ``lp``/``ft``/``lpft``, a linear head) whose ``forward`` does all
encoding of a step in at most one image pass and one text pass, so DDP sees every parameter used in its forward.

``arf``: the finetuning images are encoded once and serve both FLYP's class-prompt loss and the caption loss; the
anchor images ride in the same image pass (concatenated), and class prompts, captions and anchor texts in the
same text pass. Inside that one forward the texts are encoded in a few groups of similar length, each without
its padding columns (:func:`arf.models.text.length_groups`), for towers that mask padding.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arf.data import LabeledSet
from arf.models.base import eval_mode
from arf.models.prefix_store import PrefixStore
from arf.models.text import length_groups, text_pad_id
from arf.models.trunk import MAX_CACHE_BYTES, TrunkSplit, encode_prefix, find_split
from arf.registry import Registry
from arf.train.config import TrainConfig
from arf.train.data import Anchors
from arf.train.losses import ArfLoss, classification_loss, contrastive_loss

log = logging.getLogger(__name__)

METHODS: Registry[type[Method]] = Registry("method")

# Module names of an image tower's stem (before its first block), for ``freeze_image_blocks``: open_clip ViT,
# timm trunks and lukemelas-style EfficientNets.
_STEM = re.compile(r"(^|\.)(conv1|class_embedding|positional_embedding|ln_pre|conv_stem|_conv_stem|bn1|_bn0|"
                   r"patch_embed|cls_token|pos_embed|stem)(\.|$)")
# ... and of a text tower (token and position embeddings), for ``freeze_text_blocks``.
_TEXT_STEM = re.compile(r"(^|\.)(token_embedding|positional_embedding|embeddings)(\.|$)")


@dataclass(frozen=True)
class Phase:
    name: str  # "lp" (head only, frozen encoder) or "train"
    start: int
    steps: int
    lr: float


class TrainModule(nn.Module):
    """The model being finetuned plus an optional linear head over normalised image features.

    ``split`` (set while early image blocks are frozen and the tower can be cut): frozen-prefix activations
    ``acts`` (cached) and pixel ``images`` go through the prefix without autograd and one shared suffix pass.
    """

    def __init__(self, model: nn.Module, head: nn.Linear | None = None) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.split: TrunkSplit | None = None

    def encode_images(self, images: torch.Tensor | None, acts: torch.Tensor | None) -> torch.Tensor:
        if self.split is None:
            if acts is not None:
                raise ValueError("cached activations need a split image tower")
            return self.model.encode_image(images)
        parts = [acts] if acts is not None else []
        if images is not None:
            with torch.no_grad():
                parts.append(self.split.prefix(images))
        return self.split.suffix(torch.cat(parts) if len(parts) > 1 else parts[0])

    def encode_texts(self, texts: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """One token tensor, or groups of rows (each trimmed to its own length) encoded in turn, concatenated.

        The groups are encoded here, inside the module's single forward, not by the caller: DDP must see one
        forward per backward, and every text parameter is used by each group, so nothing goes unused.
        """
        if isinstance(texts, torch.Tensor):
            return self.model.encode_text(texts)
        parts = [t for t in texts if t.shape[0]] or list(texts[:1])
        return torch.cat([self.model.encode_text(t) for t in parts])

    def forward(self, images: torch.Tensor | None = None,
                texts: torch.Tensor | Sequence[torch.Tensor] | None = None, features: torch.Tensor | None = None,
                acts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if images is not None or acts is not None:
            out["image"] = F.normalize(self.encode_images(images, acts), dim=-1)
        if features is not None:  # cached encoder output (frozen image tower)
            out["image"] = F.normalize(features, dim=-1)
        if texts is not None:
            out["text"] = F.normalize(self.encode_texts(texts), dim=-1)
        if self.head is not None and "image" in out:
            out["logits"] = self.head(out["image"])
        else:
            out["scale"] = self.model.logit_scale.exp()
        return out


def image_param_names(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(("visual.", "vision", "image"))}


def image_blocks(model: nn.Module, image: bool = True) -> list[str]:
    """Name prefixes of the image (or text) tower's blocks in order.

    The blocks are the longest ModuleList/Sequential of same-typed children that hold parameters (so an MLP's
    ``Sequential(Linear, GELU, Linear)`` inside a block is not mistaken for the block list); ties go to the
    shallower one.
    """
    best: list[str] = []
    best_depth = 0
    for name, mod in model.named_modules():
        if name.startswith("visual") != image or not isinstance(mod, (nn.ModuleList, nn.Sequential)):
            continue
        kids = list(mod.named_children())
        if len(kids) < 2 or len({type(k) for _, k in kids}) != 1 or not all(any(True for _ in k.parameters())
                                                                          for _, k in kids):
            continue
        depth = name.count(".")
        if len(kids) > len(best) or (len(kids) == len(best) and depth < best_depth):
            best, best_depth = [f"{name}.{k}" for k, _ in kids], depth
    return best


class Method:
    """Base: a contrastive method over the CLIP model (no head)."""

    name = "base"
    has_head = False
    trains = True
    # Text pass in at most this many forwards of similar-length rows (1: one pass padded to the longest text).
    # A demo ARF step (64 prompts, captions, anchor texts; mini-clip) encodes ~2460 tokens instead of ~4220, and
    # its text pass takes 1.0 s instead of 1.7 s on 2 otherwise idle cores (benchmarks/bench_text_pass.py); a 4th
    # group saved ~6 % more tokens. Each group is another forward, though: with another process busy on the same
    # cores, every parallel op of a forward waits on the scheduler, and 3 forwards cost more than one.
    max_text_groups = 3

    def __init__(self, cfg: TrainConfig, bundle: Any, ds: LabeledSet, captions: list[str | None] | None = None,
                 anchors: Anchors | None = None) -> None:
        self.cfg = cfg
        self.bundle = bundle
        self.ds = ds
        self.captions = captions
        self.anchors = anchors
        self.module = TrainModule(bundle.model, self.build_head() if self.has_head else None)
        self.features: torch.Tensor | None = None  # cached image features for the lp phase
        self.acts: torch.Tensor | None = None  # cached frozen-prefix activations (freeze_image_blocks)
        self.anchor_acts: torch.Tensor | None = None  # the same for the retrieved anchors (NaN rows: unreadable)
        self.split = find_split(bundle.model, cfg.freeze_image_blocks)
        self.pad_id = text_pad_id(bundle.model) if cfg.trim_text_padding else None

    # -- structure ----------------------------------------------------------------------------------------------
    def build_head(self) -> nn.Linear:
        """A linear head initialised from the zero-shot text classifier (WiSE-FT): logits start as CLIP's."""
        from open_clip import build_zero_shot_classifier

        model = self.bundle.model
        fill = [lambda c, t=t: t.replace("{c}", "{}").format(c) for t in self.ds.templates]
        dev = next(model.parameters()).device
        with eval_mode(model):
            emb = build_zero_shot_classifier(model, self.bundle.tokenizer, self.ds.classnames, fill,
                                             num_classes_per_batch=10, device=dev, use_tqdm=False)
        head = nn.Linear(emb.shape[0], emb.shape[1])
        with torch.no_grad():
            head.weight.copy_(emb.T.float() * model.logit_scale.exp().float())
            head.bias.zero_()
        return head.to(dev)

    def phases(self, steps_per_epoch: int) -> list[Phase]:
        cfg = self.cfg
        n = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        return [Phase("train", 0, n, cfg.lr)]

    def set_trainable(self, phase: Phase) -> None:
        """Freeze what this method and the config keep fixed in ``phase``."""
        cfg = self.cfg
        model = self.module.model
        img = image_param_names(model)
        all_blocks = image_blocks(model)
        blocks = all_blocks[: cfg.freeze_image_blocks]
        if cfg.freeze_image_blocks > len(all_blocks):
            log.warning("freeze_image_blocks=%d but the image tower has %d blocks; freezing all of them",
                        cfg.freeze_image_blocks, len(all_blocks))

        def frozen_image_param(name: str) -> bool:
            if any(name.startswith(b + ".") for b in blocks):
                return True
            # The stem feeds the first block: frozen with it (a name inside a later block is not stem).
            in_block = any(name.startswith(b + ".") for b in all_blocks)
            return not in_block and bool(_STEM.search(name))

        all_text = image_blocks(model, image=False)
        text_blocks = all_text[: cfg.freeze_text_blocks]

        def frozen_text_param(name: str) -> bool:
            if any(name.startswith(b + ".") for b in text_blocks):
                return True
            return not any(name.startswith(b + ".") for b in all_text) and bool(_TEXT_STEM.search(name))

        for name, p in model.named_parameters():
            train = phase.name != "lp"
            if name in img:
                if cfg.freeze_image_blocks and frozen_image_param(name):
                    train = False
            elif name.startswith("logit_"):
                train = train and not self.has_head  # a head carries its own scale
            elif self.has_head or cfg.freeze_text:
                train = False  # ft/lp: text tower unused after building the head
            elif cfg.freeze_text_blocks and frozen_text_param(name):
                train = False
            p.requires_grad_(train)
        if self.module.head is not None:
            self.module.head.requires_grad_(True)
        self.module.split = self.split if phase.name != "lp" else None

    def freeze_norm_stats(self) -> None:
        """Batch-norm layers whose parameters are frozen keep their running statistics too (all of them with
        ``freeze_bn_stats``: normalised by the pretrained statistics, their affine parameters still train)."""
        for m in self.module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
                self.cfg.freeze_bn_stats or not any(p.requires_grad for p in m.parameters())
            ):
                m.eval()

    def uses_cached_features(self, phase: Phase) -> bool:
        return phase.name == "lp" and self.cfg.cache_features and not self.cfg.augment

    def uses_cached_acts(self, phase: Phase) -> bool:
        return (phase.name != "lp" and self.split is not None and self.cfg.cache_features
                and not self.cfg.augment and self.acts is not None)

    def prepare(self, phase: Phase, device: torch.device, encode_set: Any) -> None:
        """Build this phase's caches (frozen features for lp, frozen-prefix activations) before its first step."""
        if self.uses_cached_features(phase) and self.features is None:
            self.features = encode_set(self, device)
        if phase.name == "lp" or self.split is None or not self.cfg.cache_features or self.cfg.augment:
            return
        if self.acts is None:
            self.freeze_norm_stats()
            self.acts = encode_prefix(self.split, self.ds, self.bundle.preprocess_val, device, store=self.store())
        if self.cfg.lambda_ret > 0 and self.anchors is not None and self.acts is not None and self.anchor_acts is None:
            # (Only next to cached finetuning activations: the suffix pass takes cached rows first, pixels after.)
            # Anchor images are fixed and un-augmented too: decoding them and running the frozen prefix every step
            # was most of an ARF step (7 min vs FLYP's 1 min for the same 74 steps at 96 px, docs/BENCHMARKS.md).
            from arf.images import BadInputCounter
            from arf.train.data import AnchorImages

            self.freeze_norm_stats()
            images = AnchorImages(self.anchors.paths, None, None, BadInputCounter("anchors"))
            acts = encode_prefix(self.split, images, self.bundle.preprocess_val, device, store=self.store())
            self.anchor_acts = acts

    def store(self) -> PrefixStore | None:
        """Where frozen-prefix activations are shared with other runs (``prefix_store``); rank 0 alone writes."""
        from arf.train.distributed import current

        root = self.cfg.prefix_store_dir
        return None if root is None else PrefixStore(root, MAX_CACHE_BYTES, writable=current().is_master)

    def needs(self, phase: Phase) -> tuple[bool, str | None]:
        """(load finetuning pixels, anchors: ``"a"`` their pixels, ``"i"`` their indices only, None) for a step."""
        cached = self.uses_cached_features(phase) or self.uses_cached_acts(phase)
        if self.cfg.lambda_ret <= 0 or phase.name == "lp":  # a probe's step has no anchor term
            return (not cached, None)
        return (not cached, "i" if self.anchor_acts is not None else "a")

    def drop_unreadable(self, batch: dict[str, torch.Tensor], phase: Phase) -> None:
        """Rows served from a cache (no pixels in the batch) whose image could not be read leave the batch.

        Such images were counted and logged when the cache was built; their rows are NaN and would otherwise turn
        the loss into NaN and stop the run as "diverged". The pixel path drops them in the loader instead.
        """
        def readable(cache: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return (~torch.isnan(cache[idx.cpu()].flatten(1)).any(1)).to(idx.device)

        cache = (self.features if self.uses_cached_features(phase)
                 else self.acts if self.uses_cached_acts(phase) else None)
        if cache is not None and "images" not in batch and batch["indices"].numel():
            ok = readable(cache, batch["indices"])
            if not bool(ok.all()):
                for k in ("indices", "labels"):
                    batch[k] = batch[k][ok.to(batch[k].device)]
        idx = batch.get("anchor_indices")
        if idx is not None and "anchor_images" not in batch and self.anchor_acts is not None:
            batch["anchor_indices"] = idx[readable(self.anchor_acts, idx)]

    def image_inputs(self, batch: dict[str, torch.Tensor], phase: Phase) -> dict[str, torch.Tensor | None]:
        """Finetuning images (pixels or cached activations) and anchors (pixels or cached activations)."""
        anchors = batch.get("anchor_images")
        anchor_acts = None
        if anchors is None and "anchor_indices" in batch and self.anchor_acts is not None:
            anchor_acts = self.anchor_acts[batch["anchor_indices"].cpu()].to(batch["labels"].device)
        if self.uses_cached_acts(phase):
            assert self.acts is not None
            acts = self.acts[batch["indices"].cpu()].to(batch["labels"].device)
            if anchor_acts is not None:
                acts = torch.cat([acts, anchor_acts.to(acts.dtype)])
            return {"acts": acts, "images": anchors}
        images = batch["images"]
        if anchors is not None:
            images = torch.cat([images, anchors.to(images.dtype)])
        return {"images": images, "acts": None}

    # -- losses ---------------------------------------------------------------------------------------------------
    def prompts(self, labels: torch.Tensor, indices: torch.Tensor, step: int) -> list[str]:
        """One class prompt per image, its template drawn per (seed, step, image): FLYP samples templates."""
        t = self.ds.templates
        out = []
        for y, i in zip(labels.tolist(), indices.tolist(), strict=True):
            k = int(np.random.default_rng([self.cfg.seed, 2, step, i]).integers(len(t)))
            out.append(t[k].replace("{c}", "{}").format(self.ds.classnames[y]))
        return out

    def anchor_texts(self, batch: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
        """The step's captions (images without one are marked in ``batch["has_caption"]``) and anchor texts."""
        caps: list[str] = []
        if self.cfg.lambda_cap > 0:
            assert self.captions is not None
            row = [self.captions[i] for i in batch["indices"].tolist()]
            batch["has_caption"] = torch.tensor([c is not None for c in row], dtype=torch.bool)
            caps = [c for c in row if c is not None]
        anchor_texts: list[str] = []
        if self.cfg.lambda_ret > 0 and "anchor_indices" in batch:
            assert self.anchors is not None
            anchor_texts = [self.anchors.texts[i] for i in batch["anchor_indices"].tolist()]
        return caps, anchor_texts

    def encode_step(self, module: nn.Module, batch: dict[str, torch.Tensor], phase: Phase, texts: list[str]
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The step's one forward: its images (pixels or cached activations) and ``texts`` in length groups.

        Returns the module's outputs and the text embeddings in the order of ``texts`` (empty when there are none).
        """
        dev = batch["labels"].device
        inputs = self.image_inputs(batch, phase)
        if not texts:
            out = module(**inputs)
            return out, out["image"].new_zeros(0, out["image"].shape[1])
        token_groups, restore = length_groups(self.bundle.tokenizer(texts), self.pad_id, self.max_text_groups)
        out = module(texts=[g.to(dev) for g in token_groups], **inputs)
        txt = out["text"]
        if restore is not None:  # the groups were sorted by length: rows back in the order of ``texts``
            txt = txt[restore.to(dev)]
        return out, txt

    def losses(self, module: nn.Module, batch: dict[str, torch.Tensor], step: int, phase: Phase
               ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def anchor_terms(cfg: TrainConfig, objective: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                 img: torch.Tensor, n_img: int, captions: tuple[list[str], torch.Tensor],
                 anchors: tuple[list[str], torch.Tensor], scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """The method's own ``objective`` ({name: loss}) plus ARF's two anchor losses, and ``loss``, their weighted sum.

    ``img``: the finetuning images' embeddings (first ``n_img`` rows) then the anchor images'; ``captions`` /
    ``anchors``: the step's caption texts / anchor texts and their embeddings. The texts give the contrastive
    groups: identical texts are one positive set, not each other's negatives.
    """
    dev = img.device
    loss = ArfLoss(cfg.lambda_cap, cfg.lambda_ret, cfg.duplicates)
    (caps, t_cap), (atexts, t_anchor) = captions, anchors
    # Only the images that have a caption are paired with one (has_caption exists only when captions are read).
    cap_img = img[:n_img][batch["has_caption"].to(dev)] if cfg.lambda_cap > 0 else None
    terms = loss.anchor_losses(scale, caption_image_features=cap_img, caption_features=t_cap, caption_texts=caps,
                               anchor_image_features=img[n_img:], anchor_text_features=t_anchor, anchor_texts=atexts)
    return {**objective, **terms, "loss": loss.total(objective, terms)}


@METHODS.register("zeroshot")
class ZeroShot(Method):
    """No training: the base model is the final model."""

    name = "zeroshot"
    trains = False


@METHODS.register("ft")
class FineTune(Method):
    """End-to-end cross-entropy through the image tower and a zero-shot-initialised head (WiSE-FT's ft)."""

    name = "ft"
    has_head = True

    def losses(self, module, batch, step, phase):
        self.drop_unreadable(batch, phase)
        dev = batch["labels"].device
        if self.uses_cached_features(phase):
            assert self.features is not None
            out = module(features=self.features[batch["indices"].cpu()].to(dev))
        else:
            out = module(**self.image_inputs(batch, phase))
        ce = classification_loss(out["logits"], batch["labels"])
        return {"ce_loss": ce, "loss": ce}


@METHODS.register("lp")
class LinearProbe(FineTune):
    """Only the head trains, on frozen image features (cached when nothing is augmented)."""

    name = "lp"

    def phases(self, steps_per_epoch):
        cfg = self.cfg
        n = cfg.max_steps or max(1, math.ceil(cfg.lp_epochs * steps_per_epoch))
        return [Phase("lp", 0, n, cfg.lp_lr)]


@METHODS.register("lpft")
class LpFt(FineTune):
    """Linear probe for ``lp_epochs``, then end-to-end ft from the probed head (Kumar et al.)."""

    name = "lpft"

    def phases(self, steps_per_epoch):
        cfg = self.cfg
        n_lp = max(1, math.ceil(cfg.lp_epochs * steps_per_epoch))
        n_ft = max(1, math.ceil(cfg.epochs * steps_per_epoch))
        if cfg.max_steps:
            n_lp = min(n_lp, cfg.max_steps - 1) if cfg.max_steps > 1 else cfg.max_steps
            n_ft = cfg.max_steps - n_lp
        phases = [Phase("lp", 0, n_lp, cfg.lp_lr)]
        if n_ft > 0:
            phases.append(Phase("train", n_lp, n_ft, cfg.lr))
        return phases


@METHODS.register("flyp")
class Flyp(Method):
    """FLYP: contrastive loss between images and class prompts, both towers trained."""

    name = "flyp"

    def losses(self, module, batch, step, phase):
        cfg = self.cfg
        self.drop_unreadable(batch, phase)
        prompts = self.prompts(batch["labels"], batch["indices"], step)
        caps, anchor_texts = self.anchor_texts(batch)  # both empty for flyp (its anchor weights are 0)
        n_img = int(batch["labels"].shape[0])
        dev = batch["labels"].device
        out, txt = self.encode_step(module, batch, phase, prompts + caps + anchor_texts)
        img, scale = out["image"], out["scale"]
        t_prompt, t_cap, t_anchor = torch.split(txt, [len(prompts), len(caps), len(anchor_texts)])
        labels = batch["labels"].to(dev)
        groups = labels if cfg.duplicates == "multi_positive" else None
        clip = contrastive_loss(img[:n_img], t_prompt, scale, groups, cfg.duplicates)
        return anchor_terms(cfg, {"clip_loss": clip}, batch, img, n_img, (caps, t_cap), (anchor_texts, t_anchor),
                            scale)


@METHODS.register("arf")
class Arf(Flyp):
    """ARF: FLYP + λ_cap · contrastive(image, its caption) + λ_ret · contrastive(retrieved image, its text).

    The same step as flyp's: with anchor weights set, :meth:`Method.anchor_texts` hands it captions and anchor texts.
    """

    name = "arf"


@METHODS.register("arf-ft")
class ArfFt(FineTune):
    """ARF's anchors on WiSE-FT's objective: cross-entropy through the image tower and a zero-shot-initialised
    head, + λ_cap · contrastive(image, its caption) + λ_ret · contrastive(retrieved image, its text).

    Not the paper's formulation (it adds the anchors to FLYP's contrastive loss). The text tower stays frozen, as in
    ft, and is what the zero-shot classifier is read from, so the anchor terms hold the image tower to the space
    it is read in while the head fits the task; the contrastive scale is the base's (frozen) ``logit_scale``.
    """

    name = "arf-ft"

    def losses(self, module, batch, step, phase):
        if phase.name == "lp":  # arf-lpft's probe: the head alone on cached features, nothing for anchors to train
            return super().losses(module, batch, step, phase)
        cfg = self.cfg
        self.drop_unreadable(batch, phase)
        caps, anchor_texts = self.anchor_texts(batch)
        n_img = int(batch["labels"].shape[0])
        out, txt = self.encode_step(module, batch, phase, caps + anchor_texts)
        ce = classification_loss(out["logits"][:n_img], batch["labels"])
        t_cap, t_anchor = torch.split(txt, [len(caps), len(anchor_texts)])
        scale = self.module.model.logit_scale.detach().exp()
        return anchor_terms(cfg, {"ce_loss": ce}, batch, out["image"], n_img, (caps, t_cap), (anchor_texts, t_anchor),
                            scale)


@METHODS.register("arf-lpft")
class ArfLpFt(ArfFt):
    """LP-FT with ARF's anchors in its fine-tuning phase: the linear probe first, without anchors (the image tower
    is frozen then, so they would train nothing), then ``arf-ft`` from the probed head. Not the paper's formulation.
    """

    name = "arf-lpft"
    phases = LpFt.phases
