"""WiSE-FT: weight-space ensembles ``(1 - α)·θ0 + α·θ1`` of a zero-shot and a finetuned model (Wortsman et al.).

:func:`interpolate` is pure math on state dicts. :func:`wise_sweep` applies it to two models for a list of α and,
per α, writes a checkpoint and/or evaluates. For methods with a trained head (``ft``/``lp``/``lpft``) the head is
interpolated too, θ0's head being the zero-shot text head of the zero-shot model over the trained head's classes
(the head ``ft`` starts from); for ``flyp``/``arf`` the interpolated text tower gives the zero-shot head itself.
``text_alpha`` holds everything outside the image tower at an α of its own (per-tower WiSE-FT).
Image-tower blocks that both models hold bit-identically (a frozen prefix) are run once per set, not once per α
(:mod:`arf.evaluate.prefix_cache`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from arf.config import check
from arf.errors import ConfigError
from arf.evaluate.zeroshot import Head, is_image_tower_key, zeroshot_head

log = logging.getLogger(__name__)

# The prompt used for θ0's head when the trained head records no templates of its own.
FALLBACK_TEMPLATES = ["a photo of a {}."]


def check_alpha(alpha: Any, field: str = "alpha") -> float:
    """``alpha`` as a float in [0, 1], or a ConfigError naming ``field`` (the option or argument it came from)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"{field}: {alpha!r} is not a number in [0, 1]")
    return float(alpha)


def interpolate(
    theta0: Mapping[str, torch.Tensor], theta1: Mapping[str, torch.Tensor], alpha: float,
    *, text_alpha: float | None = None,
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * theta0 + alpha * theta1`` for every floating-point tensor; inputs are not modified.

    Keys and shapes must match (the error names the first key that does not). Non-float entries (integer
    buffers such as BatchNorm's ``num_batches_tracked``, token ids, masks) cannot be averaged; for 0 < α they are
    taken from ``theta1``, the finetuned model, whose buffers describe the weights it was trained with. ``alpha`` 0
    and 1 return exact copies of ``theta0`` and ``theta1``.

    ``text_alpha``, if given, is the α of every tensor outside the image tower (open_clip's ``visual.*``: the text
    tower, its projection, the logit scale), ``alpha`` staying the image tower's. Per-tower WiSE-FT: a read-out
    trained on the image features (a probe) depends on the image tower only, zero-shot heads on both.
    """
    alpha = check_alpha(alpha, "alpha")
    text = None if text_alpha is None else check_alpha(text_alpha, "text_alpha")
    only0 = [k for k in theta0 if k not in theta1]
    only1 = [k for k in theta1 if k not in theta0]
    if only0 or only1:
        key, where = (only0[0], "theta0") if only0 else (only1[0], "theta1")
        raise ConfigError(
            f"state dicts differ: key {key!r} is only in {where} ({len(only0)} keys only in theta0, "
            f"{len(only1)} only in theta1); interpolate models of the same architecture"
        )
    out: dict[str, torch.Tensor] = {}
    for k, t0 in theta0.items():
        t1 = theta1[k]
        if t0.shape != t1.shape:
            raise ConfigError(f"state dicts differ: {k!r} has shape {tuple(t0.shape)} in theta0, {tuple(t1.shape)} "
                              "in theta1")
        a = alpha if text is None or is_image_tower_key(k) else text
        if a == 0.0:
            # Every entry of theta0, integer buffers included: α = 0 *is* the zero-shot model, and its weights'
            # fingerprint must equal that model's so its evaluations are recognised (and reused) as the same.
            out[k] = t0.detach().clone()
        elif not (t0.is_floating_point() and t1.is_floating_point()):
            out[k] = t1.detach().clone()
        elif a == 1.0 or torch.equal(t0, t1):
            # A tensor the finetuning left alone (a frozen tower) stays bit-identical at every α, so the weights'
            # fingerprints — and the zero-shot heads cached by them — do not change along the sweep.
            out[k] = t1.detach().clone()
        else:
            mixed = (1.0 - a) * t0.detach().float() + a * t1.detach().float().to(t0.device)
            out[k] = mixed.to(t0.dtype)
    return out


def interpolate_heads(head0: Head, head1: Head, alpha: float) -> Head:
    """WiSE-FT for heads over the same classes (same order)."""
    if head0.classnames != head1.classnames:
        raise ConfigError("cannot interpolate heads over different class names")
    mixed = interpolate({"weight": head0.weight, "bias": head0.bias},
                        {"weight": head1.weight, "bias": head1.bias}, alpha)
    return Head(weight=mixed["weight"], bias=mixed["bias"], classnames=list(head1.classnames),
                kind="trained" if alpha > 0 else "zeroshot", reference=head1.reference,
                templates=list(head1.templates))


def parse_alphas(spec: str, field: str = "--alphas") -> list[float]:
    """``"0:1:0.1"`` (start:stop:step, stop included), ``"0,0.5,1"`` or ``"0.5"`` → sorted unique alphas in [0, 1].

    Errors name ``field``, the option the spec came from."""
    spec = str(spec).strip()
    try:
        if ":" in spec:
            parts = [float(p) for p in spec.split(":")]
            check(len(parts) == 3, field, f"{spec!r}: a range is start:stop:step, e.g. 0:1:0.1")
            start, stop, step = parts
            check(step > 0, field, f"{spec!r}: the step must be > 0")
            check(stop >= start, field, f"{spec!r}: stop must be >= start")
            # Counting steps instead of adding floats keeps 0:1:0.1 at exactly 11 values ending at 1.0.
            count = math.floor((stop - start) / step + 1e-9) + 1
            values = [round(start + i * step, 10) for i in range(count)]
        else:
            values = [float(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"{field}: {spec!r} is not a list (0,0.5,1) or range (0:1:0.1) of numbers") from None
    check(bool(values), field, "no alpha given")
    bad = [a for a in values if not 0.0 <= a <= 1.0 or math.isnan(a)]
    check(not bad, field, f"{bad[0] if bad else ''} is outside [0, 1]")
    return sorted(set(values))


def alpha_dirname(alpha: float, text_alpha: float | None = None) -> str:
    return f"alpha_{alpha:.3f}" + ("" if text_alpha is None else f"_text_{text_alpha:.3f}")


@dataclass
class WisePoint:
    """One α of a sweep: the interpolated bundle and head (valid until the next point is produced)."""

    alpha: float
    bundle: Any
    head: Head | None


def wise_points(
    bundle0: Any, bundle1: Any, alphas: Sequence[float], head1: Head | None = None, device: str = "cpu",
    head0_builder: Callable[[Any, Head], Head] | None = None, text_alpha: float | None = None,
):
    """Yield a :class:`WisePoint` per α. ``bundle0`` is reused as the container of the interpolated weights.

    ``head1`` is the finetuned model's trained head, if any; θ0's head is then the zero-shot head of ``bundle0``
    over the same classes and templates (``head0_builder`` overrides how it is built). ``text_alpha`` fixes the α
    of everything outside the image tower (:func:`interpolate`); a trained head, which reads image features,
    follows the image tower's α.
    """
    theta0 = {k: v.detach().clone() for k, v in bundle0.model.state_dict().items()}
    theta1 = {k: v.detach().clone() for k, v in bundle1.model.state_dict().items()}
    interpolate(theta0, theta1, 0.0, text_alpha=text_alpha)  # fail on mismatches and a bad text α before any work
    head0 = None
    if head1 is not None:
        head0 = (head0_builder or zeroshot_reference_head)(bundle0, head1)
    for alpha in alphas:
        bundle0.model.load_state_dict(interpolate(theta0, theta1, alpha, text_alpha=text_alpha))
        head = interpolate_heads(head0, head1, alpha) if head1 is not None and head0 is not None else None
        yield WisePoint(alpha=alpha, bundle=bundle0, head=head)


def zeroshot_reference_head(bundle0: Any, head1: Head) -> Head:
    """θ0's head for a trained head: the zero-shot head of the zero-shot model over the trained head's classes."""
    templates = head1.templates or FALLBACK_TEMPLATES
    if not head1.templates:
        log.warning("the trained head records no templates; theta0's head uses %s", FALLBACK_TEMPLATES)
    h = zeroshot_head(bundle0, head1.classnames, templates, reference=head1.reference)
    return h


def _finished(d: Path, alpha: float, text_alpha: float | None = None) -> bool:
    """A sweep folder is complete once its ``arf.json`` (written last) names this α (and text α)."""
    from arf.io import read_json

    try:
        wise = read_json(d / "arf.json")["wise"]
        text = wise.get("text_alpha")
        same_text = (text is None) == (text_alpha is None) and (
            text is None or math.isclose(float(text), float(text_alpha), abs_tol=1e-9))
        return same_text and math.isclose(float(wise["alpha"]), alpha, abs_tol=1e-9)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def wise_sweep(
    zeroshot: str,
    finetuned: str,
    alphas: Sequence[float],
    *,
    sets: Sequence[Any] | None = None,
    out_dir: str | Path | None = None,
    records_path: str | Path | None = None,
    opts: Any = None,
    method: str | None = None,
    seed: int | None = None,
    prefix_cache_bytes: int | None = None,
    prefix_store: str | Path | None = None,
    text_alpha: float | None = None,
) -> list[Any]:
    """For each α: write ``out_dir/alpha_<α>/`` (a checkpoint loadable by ``create_model``) and/or evaluate ``sets``.

    Returns the evaluation records (also appended to ``records_path`` after each α). Re-running a killed sweep
    keeps finished checkpoints and skips evaluations already in ``records_path``. Records name the finetuned
    model and its method, with ``alpha`` set. ``prefix_cache_bytes`` caps the memory for the image activations of
    a shared frozen prefix, cached across α (default 4 GiB; 0 turns the cache off). Records are the same either way.
    ``prefix_store`` is a folder where those activations are kept for later sweeps over the same base and sets
    (:mod:`arf.models.prefix_store`; a training run's ``<out_dir>/prefix-store`` serves).

    ``text_alpha`` holds everything outside the image tower at that α for the whole sweep (per-tower WiSE-FT,
    :func:`interpolate`); folders are then ``alpha_<α>_text_<t>/`` and records' method gets ``-text<t>``, so that a
    report shows each text α as a curve of its own.
    """
    from arf.evaluate.prefix_cache import PrefixFeatures
    from arf.evaluate.runner import EvalOptions, evaluate, evaluate_to_file, model_tag
    from arf.evaluate.text_prefix import TextPrefixCache
    from arf.evaluate.zeroshot import head_info, load_trained_head, write_head_file
    from arf.models import create_model, save_checkpoint
    from arf.models.checkpoint import skip_init_on_load
    from arf.models.prefix_store import PrefixStore
    from arf.models.trunk import MAX_CACHE_BYTES

    check(sets is not None or out_dir is not None, "wise", "nothing to do: give sets to evaluate and/or an out_dir")
    opts = opts or EvalOptions()
    with skip_init_on_load():  # interpolation and evaluation are deterministic: no RNG stream to keep
        bundle0 = create_model(zeroshot, device=opts.device)
        bundle1 = create_model(finetuned, device=opts.device)
    head1 = load_trained_head(finetuned)
    tag1 = model_tag(finetuned, method=method, seed=seed)
    if text_alpha is not None:
        text_alpha = check_alpha(text_alpha, "text_alpha")
        tag1 = dataclasses.replace(tag1, method=f"{tag1.method}-text{text_alpha:g}")
    cap = MAX_CACHE_BYTES if prefix_cache_bytes is None else prefix_cache_bytes
    # Detected before the first α is loaded into bundle0, from both models' weights (not from a training config).
    store = PrefixStore(prefix_store, MAX_CACHE_BYTES) if prefix_store is not None else None
    features = (PrefixFeatures.for_models(bundle0.model, bundle1.model, cap, store)
                if sets is not None and cap > 0 else None)
    # Zero-shot heads are rebuilt at each α whose text tower moved; its frozen leading layers run once per prompt batch.
    text_cache = TextPrefixCache.for_models(bundle0.model, bundle1.model) if sets is not None else None
    records: list[Any] = []
    points = wise_points(bundle0, bundle1, alphas, head1=head1, device=opts.device, text_alpha=text_alpha)
    with text_cache.active() if text_cache is not None else contextlib.nullcontext():
        for point in points:
            log.info("WiSE-FT alpha=%.3f%s", point.alpha, "" if text_alpha is None else f" (text {text_alpha:.3f})")
            if text_cache is not None:
                text_cache.check()
            if out_dir is not None:
                d = Path(out_dir) / alpha_dirname(point.alpha, text_alpha)
                if _finished(d, point.alpha, text_alpha):
                    log.info("%s already written; kept", d)
                else:
                    extra: dict[str, Any] = {
                        "method": tag1.method,
                        "wise": {"alpha": point.alpha, "zeroshot": str(zeroshot), "finetuned": str(finetuned)},
                    }
                    if text_alpha is not None:
                        extra["wise"]["text_alpha"] = text_alpha
                    if tag1.seed is not None:
                        extra["seed"] = tag1.seed
                    d.mkdir(parents=True, exist_ok=True)
                    if point.head is not None:
                        # The head goes first: save_checkpoint writes arf.json last, marking the folder complete.
                        write_head_file(point.head, d)
                        extra["head"] = head_info(point.head)
                    save_checkpoint(point.bundle, d, extra=extra)
            if sets is not None:
                tag = type(tag1)(model=tag1.model, method=tag1.method, alpha=point.alpha, seed=tag1.seed,
                                 config_hash=tag1.config_hash)
                for head, group in _head_groups(point, sets):
                    if records_path is not None:
                        records.extend(evaluate_to_file(point.bundle, group, head, records_path, tag=tag, opts=opts,
                                                        features=features))
                    else:
                        records.extend(evaluate(point.bundle, group, head, tag=tag, opts=opts, features=features))
    return records


def _head_groups(point: WisePoint, sets: Sequence[Any]) -> list[tuple[Head | None, list[Any]]]:
    """The sets to evaluate with ``point.head`` and those to evaluate with the model's own zero-shot heads.

    At α = 0 the head is θ0's zero-shot head over the trained classes and templates: for a set with exactly those
    classes and templates it is the very head the zero-shot evaluation builds, so such sets are evaluated head-less.
    Their records then carry the zero-shot evaluation's hash and are reused from it instead of being recomputed.
    """
    head = point.head
    if head is None or point.alpha != 0.0:
        return [(head, list(sets))]
    own = [ds for ds in sets if list(ds.classnames) == head.classnames and list(ds.templates) == head.templates]
    rest = [ds for ds in sets if all(ds is not o for o in own)]
    return [(h, g) for h, g in ((None, own), (head, rest)) if g]
