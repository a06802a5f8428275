"""WiSE-probe: WiSE-FT towers, a linear probe, then the text side moved back towards the zero-shot model.

A read-out recipe for any finetuned CLIP-like model (FT, FLYP, ARF, …), found on the offline benchmark
(docs/RESULTS.md §2, sixteenth to twentieth sessions); it is not the ARF paper's formulation, and a fair comparison
applies it to every method. For a finetuned model θ1 and its zero-shot model θ0:

1. for each α of a grid, interpolate θ0 → θ1 (WiSE-FT of both towers), train a linear probe on the interpolated
   model's frozen image features (configs/offline/lp.yaml: the head starts from their zero-shot head) and evaluate
   it on the selection set only (val);
2. choose α: the smallest α whose probe val (averaged over the seeds' models) reaches ``min_val`` — the most of
   the zero-shot model kept at an in-distribution accuracy the user accepts (issue 6: within 1 point of the best
   peer's val). Without a floor, the α with the best val;
3. move the probed model's text side — which the probe never reads and the zero-shot sets read alone — to
   ``text_alpha`` of θ1's (T/α of the probed model's, whose text side is at α), and evaluate on every set.

The image tower and the probe of step 3 are those of step 1, bit for bit. Every step is cached in the output
folder: finished probes are not trained again, recorded evaluations not repeated, so a killed run is started again.
Each probe's val is kept in ``probe_val.json`` beside its train hash; the probes of the α not chosen (a whole
model each) are then removed unless ``keep_probes``, and one is trained again only if a later choice needs it.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arf.config import check, config_hash, load_config
from arf.errors import ConfigError
from arf.paths import CONFIG_DIR

log = logging.getLogger(__name__)

SUFFIX = "-wp"  # records of the recipe's models: method "<finetuned method>-wp"
SELECT_RECORDS = "select.jsonl"
CHOICE_FILE = "wise_probe.json"
VAL_FILE = "probe_val.json"  # per α: the probe's train hash, the selection set's fingerprint and its val


@dataclass
class WiseProbeConfig:
    """The recipe's settings (the sessions' values: ARF α grid 0.5–0.9, floor = best peer val − 1, text 0.2)."""

    zeroshot: str = "arf:mini-clip"
    alphas: str = "0.5:0.9:0.1"        # the image α grid (start:stop:step or a list)
    min_val: float | None = None       # the val floor of step 2 (top-1 %); None: the α with the best val
    text_alpha: float | None = 0.2     # step 3's text side, as a fraction of θ1's; None: leave it at α
    select_set: str = "val"
    probe_config: str = str(CONFIG_DIR / "offline" / "lp.yaml")
    probe_overrides: list[str] = field(default_factory=list)  # TrainConfig key=value for the probe
    # The suites' data root; the probe trains from it too unless its config reads class folders (suite: folder),
    # whose root the probe config names itself (ImageNet train), not the evaluation suites' root.
    data_root: str | None = None
    keep_interpolated: bool = False    # keep step 1's WiSE-FT checkpoints (each probe's final/ holds the same towers)
    # Keep the probes of every α, not only the chosen one's: a whole model each (100 MB for the offline base,
    # 7 GB over arf demo --full's 84 probes), needed again only by a later choice of another α.
    keep_probes: bool = False

    def validate(self) -> list[float]:
        """The parsed α grid; a ConfigError names the field that is wrong."""
        from arf.evaluate.wise import check_alpha, parse_alphas

        alphas = parse_alphas(self.alphas, "alphas")
        check(all(a > 0 for a in alphas), "alphas", "must be > 0: at α 0 the probe would read the zero-shot model")
        if self.text_alpha is not None:
            check_alpha(self.text_alpha, "text_alpha")
            check(self.text_alpha <= min(alphas), "text_alpha",
                  f"{self.text_alpha} is more than the smallest α {min(alphas)}: the probed model's text side "
                  "holds only α of the finetuned model's")
        check(Path(self.probe_config).is_file(), "probe_config", f"config file not found: {self.probe_config}")
        return alphas


@dataclass
class ProbeSweep:
    """Step 1 for one finetuned model: probe val per α and each probe's checkpoint folder."""

    finetuned: str
    method: str
    seed: int | None
    folder: Path
    val: dict[float, float]
    probes: dict[float, Path]


@dataclass
class WiseProbeResult:
    alpha: float
    mean_val: dict[float, float]
    finals: list[Path]
    records: list[Any]


def choose_alpha(val: dict[float, float], min_val: float | None) -> float:
    """The smallest α whose val reaches ``min_val``; where none does (or no floor is given), the α with the best val
    (the smaller of equals)."""
    check(bool(val), "alphas", "no α evaluated")
    if min_val is not None:
        passing = [a for a in sorted(val) if val[a] >= min_val]
        if passing:
            return passing[0]
        log.warning("no α reaches the val floor %.2f (best %.2f); taking the best", min_val, max(val.values()))
    return min(sorted(val), key=lambda a: -val[a])


def text_fraction(text_alpha: float, alpha: float) -> float:
    """T/α, the probed model's share of its text side that leaves T of θ1's. Six significant digits: the folder
    name and the checkpoint's arf.json repeat it, and scripts/wise_probe.sh (the sessions' runs) rounds the same."""
    t = float(f"{text_alpha / alpha:g}")
    if t > 1:
        raise ConfigError(f"text_alpha: {text_alpha} is more than α {alpha}: the probed text side holds only α")
    return t


def _inputs_keys(cfg: WiseProbeConfig, finetuned: str, folder: Path) -> tuple[str, str]:
    """What step 1's probes depend on beyond their train config: the finetuned and zero-shot weights. A probe's
    train hash names its model by path only, so a model retrained in place must not find the old probes.

    Returns this version's key, then the one sweeps recorded before run folders became relocatable (December 2026:
    the finetuned model's absolute path), which is still accepted. Now that path is taken relative to ``folder``, so
    a run folder holding both moves or copies without its probes being trained again."""
    import os

    from arf.io import sha256_file
    from arf.models.factory import is_registered_id

    parts: dict[str, Any] = {"zeroshot": cfg.zeroshot}
    meta = Path(finetuned) / "arf.json"
    parts["finetuned_meta"] = sha256_file(meta) if meta.is_file() else "none"
    if cfg.zeroshot == "arf:mini-clip":
        parts["base"] = _weights_stamp(cfg.zeroshot)
    where = Path(finetuned).resolve()
    here = finetuned if is_registered_id(finetuned) else os.path.relpath(where, folder.resolve())
    return config_hash({**parts, "finetuned": here}), config_hash({**parts, "finetuned": str(where)})


def _probe_config(cfg: WiseProbeConfig, model: str, folder: Path, alpha: float, seed: int | None,
                  progress: bool = True) -> Any:
    from arf.train.config import TrainConfig

    quiet = [] if progress else ["progress=false"]
    overrides = [*quiet, *cfg.probe_overrides, f"model={model}", f"out_dir={folder}", f"name=probe-a{alpha:g}"]
    if seed is not None:
        overrides.append(f"seed={seed}")
    tcfg = load_config(TrainConfig, cfg.probe_config, overrides)
    if cfg.data_root is not None and tcfg.suite != "folder":
        # First, so that a data_root in probe_overrides still wins.
        tcfg = load_config(TrainConfig, cfg.probe_config, [f"data_root={cfg.data_root}", *overrides])
    check(tcfg.method == "lp", "probe_config", f"must train method lp (a probe on frozen towers), not {tcfg.method!r}")
    return tcfg


def probe_sweep(
    cfg: WiseProbeConfig, finetuned: str, folder: str | Path, select: Any, *, method: str | None = None,
    seed: int | None = None, opts: Any = None,
) -> ProbeSweep:
    """Step 1: a probe per α on the interpolated towers, evaluated on ``select`` (records in folder/select.jsonl)."""
    from arf.evaluate.runner import ModelTag, evaluate_to_file, model_tag, set_fingerprint
    from arf.evaluate.zeroshot import load_trained_head
    from arf.io import read_json, write_json
    from arf.models import create_model
    from arf.models.checkpoint import skip_init_on_load
    from arf.train.run_hash import same_run, train_hash

    alphas = cfg.validate()
    folder = Path(folder)
    tag = model_tag(finetuned, method=method, seed=seed)
    key, legacy_key = _inputs_keys(cfg, finetuned, folder)
    stamp = folder / "inputs.json"
    if folder.exists() and (not stamp.is_file() or read_json(stamp).get("key") not in (key, legacy_key)):
        # Probes of other weights (a model retrained in place, another zero-shot model) are not these.
        log.warning("%s holds probes of other inputs; removed", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(stamp, {"key": key, "zeroshot": cfg.zeroshot, "finetuned": str(finetuned)})
    for left in folder.glob(".probe-*.removing"):  # a removal a kill interrupted (_remove)
        shutil.rmtree(left, ignore_errors=True)
    known = read_json(folder / VAL_FILE) if (folder / VAL_FILE).is_file() else {}
    select_fp = set_fingerprint(select)
    val: dict[float, float] = {}
    probes: dict[float, Path] = {}
    prefix: PrefixEval | None = None
    for alpha in alphas:
        tcfg = _probe_at(cfg, folder, alpha, tag.seed, opts)
        final = tcfg.run_dir / "final"
        probes[alpha] = final
        entry = {"train_hash": train_hash(tcfg), "select": select_fp}
        seen = known.get(f"{alpha:g}", {})
        if same_run(seen.get("train_hash"), tcfg) and seen.get("select") == select_fp:
            # This very probe was evaluated on this very set: its folder may be gone (a choice of another α).
            val[alpha] = float(seen["val"])
            log.info("WiSE-probe %s seed %s: α %g, probe %s top-1 %.2f (recorded)", tag.method, tag.seed, alpha,
                     select.name, val[alpha])
            continue
        train_probe(cfg, tcfg, finetuned, alpha, tag.method, tag.seed)
        with skip_init_on_load():  # evaluation only; the probe's training (above) seeds its own stream
            bundle = create_model(str(final), device=getattr(opts, "device", "cpu"))
        ptag = ModelTag(model=str(final.resolve()), method=f"{tag.method}{SUFFIX}-select", alpha=alpha, seed=tag.seed)
        prefix = prefix or PrefixEval(cfg.zeroshot, probe_store(tcfg))
        recs = evaluate_to_file(bundle, [select], load_trained_head(str(final)), folder / SELECT_RECORDS, tag=ptag,
                                opts=opts, features=prefix)
        val[alpha] = next(r.value for r in recs if r.metric == "top1")
        known[f"{alpha:g}"] = {**entry, "val": val[alpha]}
        write_json(folder / VAL_FILE, known)  # after each α: a killed sweep keeps what it evaluated
        log.info("WiSE-probe %s seed %s: α %g, probe %s top-1 %.2f", tag.method, tag.seed, alpha, select.name,
                 val[alpha])
    return ProbeSweep(finetuned=str(finetuned), method=tag.method, seed=tag.seed, folder=folder, val=val,
                      probes=probes)


def _probe_at(cfg: WiseProbeConfig, folder: Path, alpha: float, seed: int | None, opts: Any = None) -> Any:
    """The probe's TrainConfig at ``alpha``: its model is the interpolated checkpoint ``folder/wise/alpha_<α>``."""
    from arf.evaluate.wise import alpha_dirname

    return _probe_config(cfg, str(folder / "wise" / alpha_dirname(alpha)), folder, alpha, seed,
                         getattr(opts, "progress", True))


def train_probe(cfg: WiseProbeConfig, tcfg: Any, finetuned: str, alpha: float, method: str | None,
                seed: int | None) -> Path:
    """Step 1's probe of ``tcfg`` (:func:`_probe_at`; its ``final/``): cached when this config made it, else
    trained on the interpolated towers, written first to ``tcfg.model``."""
    from arf.evaluate.wise import wise_sweep
    from arf.train.cached import final_matches, train_cached
    from arf.train.run_hash import train_hashes

    wise_dir = Path(tcfg.model)
    final = tcfg.run_dir / "final"
    if not final_matches(final, train_hashes(tcfg)):
        wise_sweep(cfg.zeroshot, finetuned, [alpha], out_dir=wise_dir.parent, method=method, seed=seed)
        log.info("WiSE-probe %s: probe at α %g", method, alpha)
        store = probe_store(tcfg)
        if tcfg.feature_prefix_blocks == 0 and store is not None:
            # Every probe of every α, method and seed holds θ0's frozen image prefix: its activations of the
            # finetuning set go through one store beside the sweeps (neither field is part of the train hash).
            tcfg = dataclasses.replace(tcfg, feature_prefix_blocks=_shared_image_blocks(cfg.zeroshot, finetuned),
                                       prefix_store=store)
        # final/ is complete: its resume points would only take disk space (gigabytes over a grid of models).
        train_cached(tcfg, keep_resume_points=False)
    if not cfg.keep_interpolated:
        shutil.rmtree(wise_dir, ignore_errors=True)
    return final


def probe_store(tcfg: Any) -> str | None:
    """The prefix store of a probe config (:func:`_probe_at`): ``auto`` is one store beside the sweeps'
    folders (``<out>/prefix-store``), shared by every probe and evaluation of the recipe; null or "": none."""
    from arf.train.config import prefix_store_folder

    # Not TrainConfig.prefix_store_dir (<out_dir>/prefix-store): a probe's out_dir is one sweep's folder.
    folder = prefix_store_folder(tcfg.prefix_store, Path(tcfg.out_dir).expanduser().parent)
    return str(folder) if folder is not None else None


class PrefixEval:
    """Image features for evaluating the recipe's models (the probes of step 1, the models of step 3): each holds
    θ0's frozen image prefix (interpolation keeps the tensors θ0 and θ1 share; a probe and step 3 leave the image
    tower as it is), so every set's prefix activations are read from the probes' store, not computed per model.

    An ``ImageFeatures`` for :func:`arf.evaluate.evaluate`, built lazily: θ0 is loaded only when a set is really
    encoded (a re-run whose records are all done loads nothing). The split is found from each model's weights
    against θ0's and :class:`PrefixFeatures` checks its first batch against the whole tower, so the records are
    the whole tower's, bit for bit (tested); without a store or a shared split, the whole tower runs.
    """

    def __init__(self, zeroshot: str, store: str | None) -> None:
        self.zeroshot = zeroshot
        self.store = store
        self._model0: Any = None
        self._current: tuple[Any, Any] | None = None  # (the model evaluated now, its PrefixFeatures or None)

    def __call__(self, bundle: Any, ds: Any, opts: Any) -> Any:
        from arf.evaluate.runner import encode_set

        if self._current is None or self._current[0] is not bundle.model:
            self._current = (bundle.model, self._features(bundle))
        features = self._current[1]
        return (features or encode_set)(bundle, ds, opts)

    def _features(self, bundle: Any) -> Any:
        from arf.evaluate.prefix_cache import PrefixFeatures
        from arf.models import create_model
        from arf.models.checkpoint import skip_init_on_load
        from arf.models.prefix_store import PrefixStore
        from arf.models.trunk import MAX_CACHE_BYTES, find_shared_split

        if self.store is None:
            return None
        if self._model0 is None:
            with skip_init_on_load():
                self._model0 = create_model(self.zeroshot).model  # once: only its weights are compared
        split = find_shared_split(bundle.model, self._model0)
        if split is None:
            return None
        return PrefixFeatures(bundle.model, split, store=PrefixStore(self.store, MAX_CACHE_BYTES))


def _shared_image_blocks(zeroshot: str, finetuned: str) -> int:
    """The leading image blocks θ0 and θ1 hold bit-identically (what the finetuning froze; 0 if none): the
    interpolated towers of every α hold them too.

    Every probe of a sweep asks for the same pair: the answer is kept per (θ0, θ1 as they are on disk), so the two
    models are loaded once per sweep (~0.45 s on the offline base), not once per probe."""
    key = (zeroshot, _weights_stamp(zeroshot), str(Path(finetuned).resolve()), _weights_stamp(finetuned))
    if key not in _SHARED_BLOCKS:
        from arf.models import create_model
        from arf.models.checkpoint import skip_init_on_load
        from arf.models.trunk import find_shared_split

        with skip_init_on_load():
            split = find_shared_split(create_model(zeroshot).model, create_model(finetuned).model)
        _SHARED_BLOCKS[key] = split.n if split is not None else 0
    return _SHARED_BLOCKS[key]


_SHARED_BLOCKS: dict[tuple[str, ...], int] = {}


def _weights_stamp(model: str) -> str:
    """What tells one state of ``model``'s weights from another without reading them: the built base's folder name
    for ``arf:mini-clip``, else the size and mtime of every file of a checkpoint folder (or file); "" for other
    ids (hub weights do not change under a name)."""
    if model == "arf:mini-clip":
        from arf.models.mini_clip import built_base_stamp

        return built_base_stamp()
    path = Path(model).expanduser()
    files = sorted(path.iterdir()) if path.is_dir() else [path] if path.is_file() else []
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.is_file())


def _remove(folder: Path) -> None:
    """Remove a probe's folder so that a kill leaves it whole or gone: a half-deleted ``final/`` whose ``arf.json``
    survived would pass for a finished probe. The rename is atomic; ``probe_sweep`` clears what a kill left."""
    doomed = folder.with_name(f".{folder.name}.removing")
    shutil.rmtree(doomed, ignore_errors=True)
    folder.rename(doomed)
    shutil.rmtree(doomed)


def finish(
    cfg: WiseProbeConfig, sweep: ProbeSweep, alpha: float, sets: Sequence[Any], records_path: str | Path, *,
    opts: Any = None, extra: dict[str, Any] | None = None,
) -> tuple[Path, list[Any]]:
    """Step 3 at the chosen α: the text side to ``cfg.text_alpha`` of θ1's; evaluate on ``sets``. Returns the
    model folder and its records (method ``<method>-wp``, no α: one model, as a plain method's)."""
    from arf.evaluate.runner import ModelTag, evaluate_to_file
    from arf.evaluate.wise import alpha_dirname, wise_sweep
    from arf.evaluate.zeroshot import load_trained_head
    from arf.io import read_json, write_json
    from arf.models import create_model
    from arf.models.checkpoint import skip_init_on_load
    from arf.train.cached import final_hash

    # The chosen probe: its folder is gone when an earlier run chose another α and removed this one.
    tcfg = _probe_at(cfg, sweep.folder, alpha, sweep.seed, opts)
    probe = train_probe(cfg, tcfg, sweep.finetuned, alpha, sweep.method, sweep.seed)
    # The probe's train hash: a probe retrained (another probe config) must not find the text-moved model of the
    # old one, which wise_sweep's own cache (it checks α only) would keep.
    probe_hash = final_hash(probe)
    if cfg.text_alpha is None:
        final = probe
    else:
        t = text_fraction(cfg.text_alpha, alpha)
        final = sweep.folder / "final" / alpha_dirname(1.0, t)
        if (final / "arf.json").is_file() and read_json(final / "arf.json").get("wise_probe", {}).get(
                "probe_hash") != probe_hash:
            shutil.rmtree(final)
        wise_sweep(cfg.zeroshot, str(probe), [1.0], out_dir=sweep.folder / "final", text_alpha=t,
                   method=sweep.method, seed=sweep.seed)
    choice = {"wise_probe": {"alpha": alpha, "text_alpha": cfg.text_alpha, "zeroshot": cfg.zeroshot,
                             "finetuned": sweep.finetuned, "probe": str(probe), "probe_hash": probe_hash,
                             "val": {f"{a:g}": v for a, v in sweep.val.items()},
                             "min_val": cfg.min_val, **(extra or {})}}
    meta = read_json(final / "arf.json")
    if meta.get("wise_probe") != choice["wise_probe"]:
        write_json(final / "arf.json", {**meta, **choice})
    with skip_init_on_load():
        bundle = create_model(str(final), device=getattr(opts, "device", "cpu"))
    tag = ModelTag(model=str(final.resolve()), method=f"{sweep.method}{SUFFIX}", seed=sweep.seed)
    return final, evaluate_to_file(bundle, sets, load_trained_head(str(final)), records_path, tag=tag, opts=opts,
                                   features=PrefixEval(cfg.zeroshot, probe_store(tcfg)))


def run_wise_probe(
    cfg: WiseProbeConfig, finetuned: Sequence[str], out: str | Path, sets: Sequence[Any], *,
    records_path: str | Path | None = None, method: str | None = None, opts: Any = None,
) -> WiseProbeResult:
    """The recipe for one method's models (one per seed): α chosen on their mean probe val, then step 3 for each.

    Folders: ``out/<method>-s<seed>/`` (probes, select.jsonl, final/); the choice in ``out/wise_probe.json``;
    records appended to ``records_path`` (default ``out/records.jsonl``).
    """
    from arf.evaluate.runner import model_tag
    from arf.io import write_json

    check(bool(finetuned), "finetuned", "no finetuned model given")
    cfg.validate()
    byname = {s.name: s for s in sets}
    check(cfg.select_set in byname, "select_set",
          f"{cfg.select_set!r} is not among the evaluated sets; choose from {', '.join(byname)}")
    out = Path(out)
    tags = [model_tag(f, method=method) for f in finetuned]
    names = [f"{t.method}-s{t.seed}" if t.seed is not None else f"{t.method}-{i}" for i, t in enumerate(tags)]
    check(len(set(names)) == len(names), "finetuned", f"two models share a method and seed: {', '.join(names)}")
    sweeps = [probe_sweep(cfg, f, out / n, byname[cfg.select_set], method=method, opts=opts)
              for f, n in zip(finetuned, names, strict=True)]
    mean = {a: sum(s.val[a] for s in sweeps) / len(sweeps) for a in sweeps[0].val}
    alpha = choose_alpha(mean, cfg.min_val)
    log.info("WiSE-probe: α %g (mean %s top-1 per α: %s; floor %s)", alpha, cfg.select_set,
             ", ".join(f"{a:g}: {v:.2f}" for a, v in mean.items()), cfg.min_val)
    records_path = Path(records_path) if records_path is not None else out / "records.jsonl"
    finals, records = [], []
    mean_val = {f"{a:g}": v for a, v in mean.items()}  # JSON keys
    extra = {"mean_val": mean_val, "seeds": [t.seed for t in tags]}
    for s in sweeps:
        final, recs = finish(cfg, s, alpha, sets, records_path, opts=opts, extra=extra)
        finals.append(final)
        records += recs
        if not cfg.keep_probes:
            for a, probe in s.probes.items():
                if a != alpha and probe.parent.exists():
                    _remove(probe.parent)  # probe-a<α>/: its val stays in probe_val.json
    write_json(out / CHOICE_FILE, {"alpha": alpha, "mean_val": mean_val,
                                   "min_val": cfg.min_val, "text_alpha": cfg.text_alpha,
                                   "select_set": cfg.select_set, "finals": [str(f) for f in finals]})
    return WiseProbeResult(alpha=alpha, mean_val=mean, finals=finals, records=records)
