"""Evaluate a model on labelled sets: encode images once per set, pick the head, score top-1 / top-5.

Head choice (docs/ARCHITECTURE.md, "Label spaces, masks and heads"): a trained head (``lp``/``ft``/``lpft``
checkpoints) is used for every set in its label space — the same class names, a ``class_mask`` into it
(ImageNet-A/-R) or a ``label_map`` onto it (ObjectNet) — and the model's own zero-shot text head for every other
set, as in WiSE-FT.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from arf.config import config_hash
from arf.data.formats import EVAL_ROLES
from arf.evaluate.records import Record, append_records, read_records
from arf.evaluate.zeroshot import Head, HeadCache, tensor_fingerprint, weights_fingerprint, zeroshot_head
from arf.models.base import eval_mode
from arf.progress import progress_bar

log = logging.getLogger(__name__)

DEFAULT_ROLES = EVAL_ROLES


@dataclass
class EvalOptions:
    """How to run an evaluation (none of this changes the numbers, except ``max_bad_fraction`` failing a run)."""

    batch_size: int = 64
    num_workers: int = 0
    device: str = "cpu"
    progress: bool = True
    roles: tuple[str, ...] = DEFAULT_ROLES


# Image features and labels of one set, as :func:`encode_set` returns them: ``(bundle, set, opts) → (feats, labels)``.
ImageFeatures = Callable[[Any, Any, EvalOptions], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ModelTag:
    """What the records say about the evaluated model."""

    model: str
    method: str = "zeroshot"
    alpha: float | None = None
    seed: int | None = None
    # The training run's config hash (arf.json), for provenance only: a record's own config_hash is computed from
    # the weights, head and set, so equal evaluations under different tags share it (see evaluate).
    config_hash: str = ""


@torch.no_grad()
def encode_set_indexed(
    bundle: Any, ds: Any, opts: EvalOptions
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`encode_set` plus, for each feature, the row of ``ds`` it belongs to (unreadable images have none)."""
    from arf.data import ImageDataset, make_loader

    dataset = ImageDataset.from_set(ds, transform=bundle.preprocess_val)
    loader = make_loader(dataset, batch_size=opts.batch_size, shuffle=False, num_workers=opts.num_workers)
    feats, labels, index = [], [], []
    with eval_mode(bundle.model) as model:
        for images, ys, idx in progress_bar(loader, desc=f"eval {ds.name}", unit="batch", enabled=opts.progress,
                                    leave=False):
            f = model.encode_image(images.to(opts.device), normalize=True)
            feats.append(f.float().cpu())
            labels.append(ys)
            index.append(idx)
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels), torch.cat(index)


def encode_set(bundle: Any, ds: Any, opts: EvalOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image features [N, D] and labels [N] of a LabeledSet (unreadable images skipped, counted)."""
    feats, labels, _ = encode_set_indexed(bundle, ds, opts)
    return feats, labels


def label_groups(ds: Any, head: Head) -> tuple[bool, list[list[int]] | None]:
    """Whether ``head`` covers ``ds``'s label space, and how: ``(covered, groups)``.

    ``groups`` is ``None`` when the label spaces are identical, else a list (set label → head class indices that
    count as correct) for a ``class_mask`` set (checked by class names) or a ``label_map`` set (checked by the
    ``reference`` name the head and the set both carry).
    """
    classes = list(head.classnames)
    n = len(classes)
    if list(ds.classnames) == classes:
        return True, None
    mask = getattr(ds, "class_mask", None)
    if mask is not None and all(0 <= i < n for i in mask) and [classes[i] for i in mask] == list(ds.classnames):
        return True, [[int(i)] for i in mask]
    label_map = getattr(ds, "label_map", None)
    reference = getattr(ds, "reference", None)
    if label_map is not None and reference is not None and reference == head.reference:
        groups = [[int(i) for i in label_map[k]] for k in range(len(ds.classnames))]
        if all(0 <= i < n for g in groups for i in g):
            return True, groups
    return False, None


def covering_head(ds: Any, head: Head | None) -> tuple[Head | None, list[list[int]] | None]:
    """``(head, groups)`` where ``head`` covers ``ds``'s label space (:func:`label_groups`), else ``(None, None)``:
    the set is then read with the model's zero-shot head."""
    covered, groups = label_groups(ds, head) if head is not None else (False, None)
    return (head, groups) if covered else (None, None)


def project_logits(logits: torch.Tensor, groups: Sequence[Sequence[int]] | None) -> torch.Tensor:
    """Logits in a set's label space: with ``groups`` (set label → reference classes), the max over each label's
    reference classes (WiSE-FT's ObjectNet projection; for a ``class_mask`` each group has one class and this is
    ``logits[:, mask]``); without, unchanged."""
    if groups is None:
        return logits
    return torch.stack([logits[:, list(g)].max(dim=1).values for g in groups], dim=1)


def topk_correct(
    logits: torch.Tensor, labels: torch.Tensor, groups: Sequence[Sequence[int]] | None, ks: Iterable[int] = (1, 5)
) -> dict[int, int]:
    """Number of images whose label is among the top-k predictions, for each k.

    With ``groups`` the logits are first projected to the set's label space (:func:`project_logits`); top-1 is
    then "the argmax over the mapped reference classes is one of the label's classes".
    """
    logits = project_logits(logits, groups)
    out = {}
    for k in ks:
        k_eff = min(k, logits.shape[1])
        top = logits.topk(k_eff, dim=1).indices
        out[k] = int((top == labels[:, None]).any(dim=1).sum())
    return out


@dataclass(frozen=True)
class SetPredictions:
    """Top-1 predictions of a model on one set, in the set's label space, as :func:`evaluate` scores them."""

    pred: torch.Tensor  # [N] predicted label
    labels: torch.Tensor  # [N] true label
    index: torch.Tensor  # [N] row of the set (unreadable images have no prediction)
    head: str  # the head's kind: "trained" or "zeroshot"


def predict_set(bundle: Any, ds: Any, head: Head | None = None, opts: EvalOptions | None = None) -> SetPredictions:
    """Per-image top-1 of ``bundle`` on ``ds`` with the head :func:`evaluate` would use: ``head`` where it covers
    the set's label space (directly, by class mask or by label map), else the zero-shot head of the set's class
    names × templates. For analyses of which images a model gets wrong (scripts/confusions.py)."""
    opts = opts or EvalOptions(progress=False)
    trained, groups = covering_head(ds, head)
    use_head = trained or zeroshot_head(bundle, ds.classnames, ds.templates, device=opts.device)
    feats, labels, index = encode_set_indexed(bundle, ds, opts)
    if labels.numel() == 0:
        return SetPredictions(labels, labels, index, use_head.kind)
    pred = project_logits(use_head.logits(feats), groups).argmax(dim=1)
    return SetPredictions(pred, labels, index, use_head.kind)


def metrics_for(num_classes: int) -> dict[str, int]:
    """Metric name → k: top-1 always, top-5 only where a set has more than 5 classes."""
    return {"top1": 1, "top5": 5} if num_classes > 5 else {"top1": 1}


def set_fingerprint(ds: Any) -> str:
    """Everything about a set that changes its numbers: images, labels, label space, templates, mask, map.

    Images are named by path; where the set knows a hash of its content (``info["content_sha256"]``: the offline
    benchmark's per-set table, which holds every image's sha256), that is included too, so a rebuilt benchmark
    whose images changed under the same paths is evaluated again. Folder suites have no such hash (hashing an
    ImageNet-sized folder per evaluation would cost more than the evaluation); their fingerprint is unchanged.
    """
    label_map = getattr(ds, "label_map", None)
    parts = [ds.name, ds.role, list(ds.classnames), list(ds.templates), list(ds.paths), [int(x) for x in ds.labels],
             getattr(ds, "class_mask", None),
             None if label_map is None else {str(k): v for k, v in sorted(label_map.items())},
             getattr(ds, "reference", None)]
    content = (getattr(ds, "info", None) or {}).get("content_sha256")
    if content:
        parts.append(content)
    return config_hash(*parts)


def evaluate(
    bundle: Any,
    sets: Iterable[Any],
    head: Head | None = None,
    *,
    tag: ModelTag | None = None,
    opts: EvalOptions | None = None,
    cache: HeadCache | None = None,
    done: Iterable[Record] | None = None,
    features: ImageFeatures | None = None,
) -> list[Record]:
    """Top-1 (and top-5 where classes > 5) of ``bundle`` on each set whose role is in ``opts.roles``.

    ``head``: a trained head (e.g. from :func:`arf.evaluate.load_trained_head`), used for the sets in its label
    space; every other set gets the model's zero-shot head built from the set's class names and templates.
    Values are percentages. Each record's ``config_hash`` identifies what its number depends on — the weights, the
    head and the set's content, not the tag — so a set already evaluated in ``done`` with the same hash is not
    evaluated again: under the same tag its old record is returned; under another tag (e.g. every WiSE-FT
    sweep's α = 0 point, which is the zero-shot model already evaluated as ``zeroshot``) a copy carrying this tag.

    ``features`` replaces :func:`encode_set` for computing a set's image features (e.g. a WiSE-FT sweep's
    :class:`arf.evaluate.prefix_cache.PrefixFeatures`); it must return exactly what ``encode_set`` would.
    """
    opts = opts or EvalOptions()
    tag = tag or ModelTag(model=str(getattr(bundle, "model_id", "model")))
    mine: dict[str, list[Record]] = {}
    anyone: dict[str, list[Record]] = {}
    for r in done or ():
        anyone.setdefault(r.config_hash, []).append(r)
        if r.model == tag.model and r.method == tag.method and r.alpha == tag.alpha and r.seed == tag.seed:
            mine.setdefault(r.config_hash, []).append(r)
    model_fp = weights_fingerprint(bundle.model)
    records: list[Record] = []
    for ds in sets:
        if ds.role not in opts.roles:
            continue
        trained, groups = covering_head(ds, head)
        head_fp = tensor_fingerprint(trained.weight, trained.bias) if trained is not None else "zeroshot"
        chash = config_hash(model_fp, head_fp, groups, set_fingerprint(ds))
        metrics = metrics_for(len(ds.classnames))
        old = {r.metric: r for r in mine.get(chash, [])}
        if set(metrics) <= set(old):
            log.info("%s on %s: already evaluated (config %s); kept", tag.model, ds.name, chash)
            records.extend(old[m] for m in metrics)
            continue
        same = {r.metric: r for r in anyone.get(chash, [])}
        if set(metrics) <= set(same):
            log.info("%s on %s: the same weights, head and images were evaluated as %s (%s, alpha %s); reused",
                     tag.model, ds.name, same["top1"].model, same["top1"].method, same["top1"].alpha)
            records.extend(dataclasses.replace(same[m], model=tag.model, method=tag.method, alpha=tag.alpha,
                                               seed=tag.seed) for m in metrics)
            continue
        use_head = trained or zeroshot_head(bundle, ds.classnames, ds.templates, device=opts.device, cache=cache)
        feats, labels = (features or encode_set)(bundle, ds, opts)
        n = int(labels.numel())
        if n == 0:
            log.warning("set %s: no readable images; skipped", ds.name)
            continue
        correct = topk_correct(use_head.logits(feats), labels, groups, metrics.values())
        for metric, k in metrics.items():
            records.append(
                Record(
                    model=tag.model, method=tag.method, alpha=tag.alpha, set=ds.name, role=ds.role, metric=metric,
                    value=100.0 * correct[k] / n, n=n, config_hash=chash, seed=tag.seed, head=use_head.kind,
                )
            )
        log.info("%s on %s (%s head): top-1 %.2f%% of %d", tag.model, ds.name, use_head.kind,
                 100.0 * correct[1] / n, n)
    return records


def evaluate_to_file(
    bundle: Any, sets: Iterable[Any], head: Head | None, records_path: str | Path, **kw: Any
) -> list[Record]:
    """:func:`evaluate`, skipping sets already recorded in ``records_path`` and appending only new records."""
    path = Path(records_path)
    done = read_records(path) if path.is_file() else []
    records = evaluate(bundle, sets, head, done=done, **kw)
    seen = {id(r) for r in done}
    new = [r for r in records if id(r) not in seen]
    if new:
        append_records(path, new)
    return records


def _meta_sources(d: Any) -> list[dict[str, Any]]:
    """Where a method/seed may be recorded: the top level and the ``train`` section (arf.json, config.yaml).

    ``info`` is deliberately not searched: it describes the architecture (a base model's own init seed lives
    there), not the training run.
    """
    if not isinstance(d, dict):
        return []
    train = d.get("train")
    return [d, train] if isinstance(train, dict) else [d]


def model_tag(spec: str, method: str | None = None, seed: int | None = None) -> ModelTag:
    """Describe a model for records: method and seed from the checkpoint's ``arf.json`` or its run's
    ``config.yaml`` (two folders up at most), unless given; a model id with neither is ``zeroshot``."""
    import yaml

    from arf.io import read_json

    found: dict[str, Any] = {}
    p = Path(spec)
    if p.exists():
        d = p if p.is_dir() else p.parent
        sources: list[dict[str, Any]] = []
        if (d / "arf.json").is_file():
            sources += _meta_sources(read_json(d / "arf.json"))
        for parent in (d, d.parent, d.parent.parent):
            if (parent / "config.yaml").is_file():
                loaded = yaml.safe_load((parent / "config.yaml").read_text())
                sources += _meta_sources(loaded)
                break
        for key in ("method", "seed", "config_hash"):
            for src in sources:
                v = src.get(key)
                if v is not None:
                    found[key] = v
                    break
        spec = str(p.resolve())
    seed_v = seed if seed is not None else found.get("seed")
    return ModelTag(
        model=spec,
        method=method or str(found.get("method", "zeroshot")),
        seed=None if seed_v is None else int(seed_v),
        config_hash=str(found.get("config_hash", "")),
    )
