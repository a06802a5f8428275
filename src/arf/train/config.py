"""``TrainConfig``: one dataclass for every method, loaded with :func:`arf.config.load_config`.

``validate()`` runs before any model or image is loaded, so a typo in a long config fails in a second with one
:class:`ConfigError` naming the field and what it may be. Checks that need the data (batch larger than the
finetuning set, an anchor file retrieved for another set/model) are in :func:`check_against_data`, still before
the first forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from arf.config import check
from arf.errors import ConfigError
from arf.method_names import ANCHOR_METHODS, METHOD_NAMES


@dataclass
class TrainConfig:
    """Everything a training run needs; defaults are the offline-benchmark CPU scale."""

    method: str = "flyp"
    model: str = "arf:mini-clip"
    # Finetuning data: the set ``train_set`` of the suite ``suite`` (read from ``data_root``, default $ARF_DATA).
    # ``suite: folder`` reads class folders at ``data_root`` (e.g. ImageNet train) with the class names,
    # templates and folder order given below (asset names such as ``imagenet``, or JSON files); a ``.yaml`` suite
    # file names your own sets (arf.data.suite_file), ``train_set`` one of them.
    suite: str = "offline"
    train_set: str = "train"
    data_root: str | None = None
    folder_classnames: str | None = None
    folder_templates: str | None = None
    folder_order: str | None = None
    # Run folder = out_dir/name (name defaults to the method).
    out_dir: str = "runs"
    name: str | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Recompute the trained blocks' activations in the backward pass (open_clip's --grad-checkpointing): less
    # memory for a larger micro-batch, about a third more compute; the same gradients.
    grad_checkpointing: bool = False

    # Length: ``epochs`` over the finetuning set, or ``max_steps`` optimizer steps when set (it wins).
    epochs: float = 1.0
    max_steps: int | None = None
    # Global batch per optimizer step (all ranks, all accumulation micro-steps together).
    batch_size: int = 64
    accum_steps: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 0
    min_lr: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6

    # lp / lpft: the linear-probe phase (head only, frozen encoder) has its own length and learning rate.
    lp_epochs: float = 1.0
    lp_lr: float = 1e-3
    # With nothing augmented, encode the finetuning set once through what is frozen: the whole image tower
    # (lp, lpft's lp phase) or its stem + first ``freeze_image_blocks`` blocks (where the tower can be split).
    cache_features: bool = True
    # Where those frozen-prefix activations are kept for later runs over the same images and prefix weights (the
    # other methods and seeds finetuning one base; arf.models.prefix_store): "auto" is <out_dir>/prefix-store, null
    # (or "") keeps them in memory only. At most 4 GiB there, least recently used entries removed first.
    prefix_store: str | None = "auto"
    # lp features (the whole frozen image tower): run its first N blocks through that store and only the rest here,
    # for probes on towers that share a frozen prefix with others (`arf wise-probe` sets it to what θ0 and θ1 share).
    # The first batch must match the whole tower bit for bit, else the whole tower is used; 0: always the whole tower.
    feature_prefix_blocks: int = 0

    # Parts kept frozen (CPU budgets): the first N image blocks (and the stem before them), the text tower.
    freeze_image_blocks: int = 0
    freeze_text: bool = False
    freeze_text_blocks: int = 0  # the token/position embeddings and the first N text blocks
    # Keep every batch-norm layer's running statistics (trained ones too) at the pretrained values, as open_clip's
    # ``lock_image(freeze_bn_stats=True)``. CLIP ViTs have no batch norm; in a BN tower (the offline base's
    # EfficientNet) the statistics otherwise adapt to the finetuning domain, which alone costs much of the
    # accuracy on other domains (docs/RESULTS.md).
    freeze_bn_stats: bool = False
    # Drop all-padding token columns before the text pass (exact for towers that mask padding, e.g. HF ones).
    trim_text_padding: bool = True
    # Random train-time augmentation (the model's ``preprocess_train``) or the eval transform.
    augment: bool = False

    # Contrastive batches: a class appearing twice in a batch is a positive for both images
    # ("multi_positive", our default) or a negative as in FLYP's code ("ignore").
    duplicates: Literal["multi_positive", "ignore"] = "multi_positive"

    # ARF anchors: captions parquet (image_id, path, caption, captioner) and retrieved-anchor parquet
    # (pool_id, path, text, score, query_class) with its JSON sidecar.
    captions: str | None = None
    anchors: str | None = None
    anchor_root: str | None = None  # base folder for relative anchor paths (default: the finetuning data root)
    lambda_cap: float = 0.0
    lambda_ret: float = 0.0
    anchor_batch_size: int = 64

    num_workers: int = 0
    log_every: int = 1
    checkpoint_every: int = 0  # optimizer steps; 0 = only at the end
    keep_checkpoints: int = 2
    tensorboard: bool = True
    progress: bool = True

    def validate(self) -> None:
        check(self.method in METHOD_NAMES, "method", f"unknown method {self.method!r}; choose from "
              + ", ".join(METHOD_NAMES))
        for name in ("lr", "lp_lr", "weight_decay", "min_lr", "grad_clip", "lambda_cap", "lambda_ret", "epochs",
                     "lp_epochs"):
            value = getattr(self, name)
            check(value >= 0, name, f"must be >= 0, got {value}")
        check(self.lr > 0 or self.method == "zeroshot", "lr", f"must be > 0, got {self.lr}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.accum_steps >= 1, "accum_steps", f"must be >= 1, got {self.accum_steps}")
        check(self.batch_size % self.accum_steps == 0, "batch_size",
              f"{self.batch_size} is not divisible by accum_steps={self.accum_steps}")
        check(self.anchor_batch_size >= 1, "anchor_batch_size", f"must be >= 1, got {self.anchor_batch_size}")
        check(self.max_steps is None or self.max_steps >= 1, "max_steps", f"must be >= 1, got {self.max_steps}")
        check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(self.freeze_image_blocks >= 0, "freeze_image_blocks", f"must be >= 0, got {self.freeze_image_blocks}")
        check(self.feature_prefix_blocks >= 0, "feature_prefix_blocks",
              f"must be >= 0, got {self.feature_prefix_blocks}")
        check(self.freeze_text_blocks >= 0, "freeze_text_blocks", f"must be >= 0, got {self.freeze_text_blocks}")
        check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1/beta2", "must be in [0, 1)")
        check(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        check(self.checkpoint_every >= 0, "checkpoint_every", f"must be >= 0, got {self.checkpoint_every}")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        check(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "device",
              f"{self.device!r} is not allowed; choose from auto, cpu, cuda, cuda:N")
        if self.method in ANCHOR_METHODS:
            check(self.lambda_cap > 0 or self.lambda_ret > 0, "lambda_cap/lambda_ret",
                  f"method {self.method} needs lambda_cap > 0 or lambda_ret > 0 (with both 0 it is "
                  f"{ANCHOR_METHODS[self.method]}; use method: {ANCHOR_METHODS[self.method]})")
        else:
            check(self.lambda_cap == 0 and self.lambda_ret == 0, "lambda_cap/lambda_ret",
                  f"anchor losses are only used by methods {', '.join(ANCHOR_METHODS)}, not {self.method}; "
                  "set them to 0")
        if self.suite == "folder":
            check(bool(self.data_root), "data_root", "suite folder needs data_root (the class-folder root)")
            check(bool(self.folder_classnames and self.folder_templates), "folder_classnames/folder_templates",
                  "suite folder needs class names and templates (asset names or JSON files)")
        if self.lambda_cap > 0:
            _check_file(self.captions, "captions", "lambda_cap > 0 needs a captions parquet (`arf caption`)")
        if self.lambda_ret > 0:
            _check_file(self.anchors, "anchors", "lambda_ret > 0 needs an anchor set (`arf retrieve`)")

    @property
    def run_name(self) -> str:
        return self.name or self.method

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir).expanduser() / self.run_name

    @property
    def prefix_store_dir(self) -> Path | None:
        """The folder ``prefix_store`` names (``auto``: ``<out_dir>/prefix-store``), or None when it is off."""
        return prefix_store_folder(self.prefix_store, Path(self.out_dir).expanduser())


def prefix_store_folder(prefix_store: str | None, auto_parent: Path) -> Path | None:
    """The folder a ``prefix_store`` value names: ``auto`` is ``<auto_parent>/prefix-store``; null or "": none."""
    if not prefix_store:
        return None
    if prefix_store == "auto":
        return auto_parent / "prefix-store"
    return Path(prefix_store).expanduser()


def anchor_parquet(path: str | Path) -> Path:
    """An anchor set given as its folder or its parquet file -> the parquet path."""
    p = Path(path).expanduser()
    return p / "anchors.parquet" if p.is_dir() else p


def _check_file(path: str | None, field: str, why: str) -> None:
    if not path:
        raise ConfigError(f"{field}: not set; {why}")
    p = anchor_parquet(path) if field == "anchors" else Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{field}: file not found: {p}; {why}")
    if field == "anchors" and not p.with_suffix(".json").is_file() and not p.with_name("anchors.json").is_file():
        raise ConfigError(f"anchors: {p} has no JSON sidecar (anchors.json) naming the pool, model and set it was "
                          "retrieved for")


def check_against_data(cfg: TrainConfig, n_train: int, world_size: int, set_name: str, model_id: str,
                       anchor_meta: dict[str, Any] | None, classnames: Sequence[str] | None = None) -> None:
    """Checks that need the loaded set and model but no forward pass.

    ``classnames`` are the finetuning set's: anchors are retrieved per class, so a file made for another class list
    is refused even when its set name matches (every suite calls its finetuning set ``train``).
    """
    check(cfg.batch_size <= n_train or cfg.method == "zeroshot", "batch_size",
          f"{cfg.batch_size} is larger than the finetuning set {set_name!r} ({n_train} images)")
    micro = cfg.batch_size // cfg.accum_steps
    check(micro % world_size == 0, "batch_size",
          f"the micro-batch {micro} (batch_size / accum_steps) is not divisible by the {world_size} processes")
    if anchor_meta is not None:
        got_set = anchor_meta.get("finetune_set")
        got_model = anchor_meta.get("model")
        if got_set is not None and got_set != set_name:
            raise ConfigError(f"anchors: {cfg.anchors} were retrieved for the set {got_set!r}, not the finetuning "
                              f"set {set_name!r}; retrieve anchors for {set_name!r}")
        if got_model is not None and got_model != model_id:
            raise ConfigError(f"anchors: {cfg.anchors} were retrieved with model {got_model!r}, not {model_id!r}; "
                              f"retrieve anchors with {model_id!r}")
        if classnames is not None:
            _check_anchor_classes(cfg.anchors, anchor_meta, set_name, list(classnames))


def _check_anchor_classes(anchors: str | None, meta: dict[str, Any], set_name: str, classnames: list[str]) -> None:
    """The sidecar's ``classnames_hash`` / ``n_classes`` (written by ``arf retrieve``) against the set's classes."""
    from arf.anchors.sources import ImageSet

    # The hash the retrieval stage wrote, computed by the same code (ImageSet.classnames_hash).
    ours = ImageSet(name=set_name, root=Path("."), paths=[], classnames=classnames).classnames_hash()
    got_hash, got_n = meta.get("classnames_hash"), meta.get("n_classes")
    if (got_hash is not None and got_hash != ours) or (got_n is not None and got_n != len(classnames)):
        raise ConfigError(
            f"anchors: {anchors} were retrieved for other class names (classnames_hash {got_hash}, {got_n} classes) "
            f"than the finetuning set {set_name!r} (classnames_hash {ours}, {len(classnames)} classes, e.g. "
            f"{', '.join(classnames[:3])}); retrieve anchors for this set"
        )
