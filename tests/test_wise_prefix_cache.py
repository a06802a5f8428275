"""WiSE-FT sweeps reuse the frozen image-tower prefix across α: same records, detected from weights, fallbacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import arf.evaluate.prefix_cache as prefix_cache
import arf.evaluate.runner as runner
import arf.models.trunk as trunk
from arf.data import ImageDataset, LabeledSet
from arf.evaluate import EvalOptions, encode_set, wise_sweep
from arf.evaluate.prefix_cache import PrefixFeatures
from arf.models import create_model, save_checkpoint
from arf.models.trunk import find_shared_split
from train_fixtures import effnet_bundle

COLORS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 40)]
NAMES = ["red", "green", "blue", "yellow"]
SHARED = 3  # θ1 below differs from θ0 from image block 3 on
ALPHAS = [0.0, 0.4, 1.0]
OPTS = EvalOptions(batch_size=16, progress=False)  # set_b: two batches, the first one short of its bad image


def noisy_set(root: Path, name: str, role: str, per_class: int = 6, bad: int = 0, seed: int = 0) -> LabeledSet:
    """Noisy solid-colour images (so features differ per image); the first ``bad`` files are not images.

    One bad file in 24 stays under the 5% bad-input limit; the batch it falls in shrinks.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for i in range(per_class * len(NAMES)):
        k = (i * 3) % len(NAMES)  # labels interleaved, not sorted: their order must survive the cache
        arr = np.clip(np.array(COLORS[k])[None, None] + rng.normal(0, 40, (20, 20, 3)), 0, 255).astype(np.uint8)
        p = root / f"{name}_{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p.name)
        labels.append(k)
    for i in range(bad):
        (root / paths[3 + i]).write_bytes(b"not a png")
    return LabeledSet(name=name, role=role, classnames=NAMES, templates=["a photo of a {}."], paths=paths,
                      labels=labels, root=str(root))


def perturb(module: torch.nn.Module, buffers: bool = False) -> None:
    """Change every float parameter of ``module`` (or, with ``buffers``, only its BatchNorm running variances)."""
    with torch.no_grad():
        if buffers:
            for name, b in module.named_buffers():
                if name.endswith("running_var"):
                    b.mul_(1.5)
        else:
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))


@pytest.fixture(scope="module")
def sweep_env(tmp_path_factory):
    """θ0 and θ1 checkpoints of an EfficientNet-trunk CLIP sharing stem + blocks 0..2, and two eval sets."""
    root = tmp_path_factory.mktemp("prefix")
    b0 = effnet_bundle()
    save_checkpoint(b0, root / "zs")
    torch.manual_seed(1)
    for blk in b0.model.visual.trunk.blocks[SHARED:]:
        perturb(blk)
    perturb(b0.model.visual.trunk.conv_head)
    perturb(b0.model.visual.head)
    perturb(b0.model.transformer)
    save_checkpoint(b0, root / "ft", extra={"method": "flyp"})
    sets = [noisy_set(root / "a", "set_a", "id", per_class=3),
            noisy_set(root / "b", "set_b", "shift", bad=1, seed=1)]
    return str(root / "zs"), str(root / "ft"), sets


def key(records):
    return sorted((r.set, r.metric, r.alpha, r.value, r.n, r.config_hash, r.head) for r in records)


def counting(mp: pytest.MonkeyPatch, module: object, name: str) -> list[tuple]:
    """Replace ``module.name`` with a wrapper that records its calls; returns the list of calls."""
    calls: list[tuple] = []
    orig = getattr(module, name)

    def wrapper(*a, **kw):
        calls.append(a)
        return orig(*a, **kw)

    mp.setattr(module, name, wrapper)
    return calls


@pytest.fixture(scope="module")
def sweeps(sweep_env, tmp_path_factory):
    """The same sweep with and without the cache, each with its call counts (run once for the tests below)."""
    zs, ft, sets = sweep_env
    out = {}
    for name, cap in (("cached", None), ("plain", 0)):
        with pytest.MonkeyPatch.context() as mp:
            calls = {"prefix": counting(mp, trunk, "prefix_batches"),
                     "encode_set": counting(mp, runner, "encode_set"),
                     "fallback": counting(mp, prefix_cache, "encode_set"),
                     "decoded": counting(mp, ImageDataset, "load")}
            records = wise_sweep(zs, ft, ALPHAS, sets=sets, opts=OPTS, prefix_cache_bytes=cap,
                                 records_path=tmp_path_factory.mktemp(name) / "records.jsonl")
        out[name] = (records, {k: len(v) for k, v in calls.items()})
    return out


def test_cached_sweep_gives_the_same_records(sweeps):
    cached, plain = sweeps["cached"][0], sweeps["plain"][0]
    assert key(cached) == key(plain)
    assert len(cached) == len(ALPHAS) * 2  # two sets of 4 classes: top-1 only
    assert {r.n for r in cached if r.set == "set_b"} == {23}  # the unreadable image is dropped either way
    assert len({r.value for r in cached}) > 1  # the α differ: a test of equal records, not of a constant


def test_prefix_is_computed_once_per_set_not_per_alpha(sweeps, sweep_env):
    sets = sweep_env[2]
    n_images = sum(len(ds) for ds in sets)
    cached, plain = sweeps["cached"][1], sweeps["plain"][1]
    assert cached == {"prefix": len(sets), "encode_set": 0, "fallback": 0, "decoded": n_images}
    assert plain == {"prefix": 0, "encode_set": len(ALPHAS) * len(sets), "fallback": 0,
                     "decoded": len(ALPHAS) * n_images}


def test_over_the_memory_cap_each_alpha_encodes_in_full(sweeps, sweep_env, monkeypatch):
    zs, ft, sets = sweep_env
    prefix_calls = counting(monkeypatch, trunk, "prefix_batches")
    fallback_calls = counting(monkeypatch, prefix_cache, "encode_set")
    small = wise_sweep(zs, ft, ALPHAS, sets=sets, opts=OPTS, prefix_cache_bytes=1000)
    assert key(small) == key(sweeps["plain"][0])
    # One look at each set's first batch decides it does not fit; it is not retried at later α.
    assert len(prefix_calls) == len(sets) and len(fallback_calls) == len(ALPHAS) * len(sets)


def test_features_match_encode_set_bit_for_bit(sweep_env):
    zs, ft, sets = sweep_env
    b0, b1 = create_model(zs), create_model(ft)
    features = PrefixFeatures.for_models(b0.model, b1.model)
    assert features is not None and features.split.n == SHARED
    for ds in sets:
        f_ref, y_ref = encode_set(b0, ds, OPTS)
        for _ in range(2):  # first call fills the cache, second serves from it
            f, y = features(b0, ds, OPTS)
            assert torch.equal(f, f_ref) and torch.equal(y, y_ref)
    assert features.verified and not features.disabled and features.used_bytes > 0
    b0.model.train()
    features(b0, sets[0], OPTS)
    assert b0.model.training  # the caller's mode is restored


def test_prefix_detected_from_weights_not_config():
    b0 = effnet_bundle()
    n_blocks = len(b0.model.visual.trunk.blocks)
    same = effnet_bundle()
    split = find_shared_split(b0.model, same.model)
    assert split is not None and split.n == n_blocks - 1  # everything shared: one block is left to the suffix
    for k in (1, 2, 4):
        for buffers in (False, True):
            b1 = effnet_bundle()
            perturb(b1.model.visual.trunk.blocks[k], buffers=buffers)
            split = find_shared_split(b0.model, b1.model)
            assert split is not None and split.n == k, (k, buffers)
    for module in ("conv_stem", "bn1"):
        b1 = effnet_bundle()
        perturb(getattr(b1.model.visual.trunk, module), buffers=module == "bn1")
        assert find_shared_split(b0.model, b1.model) is None
    b1 = effnet_bundle()
    perturb(b1.model.visual.trunk.blocks[0])
    assert find_shared_split(b0.model, b1.model) is None
    assert find_shared_split(b0.model, effnet_bundle(seed=3).model) is None  # nothing frozen


def test_no_timm_trunk_falls_back_to_the_plain_path(tmp_path):
    b1 = create_model("arf:tiny-clip")
    torch.manual_seed(2)
    perturb(b1.model.visual.transformer.resblocks[-1])
    save_checkpoint(b1, tmp_path / "ft", extra={"method": "flyp"})
    assert find_shared_split(create_model("arf:tiny-clip").model, b1.model) is None
    sets = [noisy_set(tmp_path / "a", "set_a", "id")]
    cached = wise_sweep("arf:tiny-clip", str(tmp_path / "ft"), [0.0, 0.5], sets=sets, opts=OPTS)
    plain = wise_sweep("arf:tiny-clip", str(tmp_path / "ft"), [0.0, 0.5], sets=sets, opts=OPTS,
                       prefix_cache_bytes=0)
    assert key(cached) == key(plain) and len(cached) == 2


def test_a_changed_prefix_is_not_served_from_the_cache(sweep_env):
    zs, ft, sets = sweep_env
    b0, b1 = create_model(zs), create_model(ft)
    features = PrefixFeatures.for_models(b0.model, b1.model)
    features(b0, sets[0], OPTS)
    perturb(b0.model.visual.trunk.blocks[0])
    f, _ = features(b0, sets[0], OPTS)
    assert torch.equal(f, encode_set(b0, sets[0], OPTS)[0])


def test_sweeps_share_the_prefix_through_a_store(sweeps, sweep_env, tmp_path, monkeypatch):
    """A second sweep over the same θ0 and sets decodes one batch: the check of the split on the first set (the
    entries, written by this process, need no check of their own)."""
    zs, ft, sets = sweep_env
    store = tmp_path / "store"
    first = wise_sweep(zs, ft, ALPHAS, sets=sets, opts=OPTS, prefix_store=store)
    decoded = counting(monkeypatch, ImageDataset, "load")
    second = wise_sweep(zs, ft, ALPHAS, sets=sets, opts=OPTS, prefix_store=store)
    assert key(first) == key(second) == key(sweeps["plain"][0])
    assert len(list(store.glob("prefix-*.safetensors"))) == len(sets)
    assert len(decoded) == min(len(sets[0]), OPTS.batch_size)
