"""Frozen-prefix activations on disk: read back bit for bit, keyed by what they depend on, stale or damaged entries
recomputed, least recently used pruned, and a training run that reads them trains the same model."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import arf.data
import arf.models.prefix_store as prefix_store
from arf.data import ImageDataset
from arf.errors import ArfError
from arf.models.checkpoint import load_state_dict
from arf.models.prefix_store import PrefixActs, PrefixStore, store_key
from arf.models.trunk import find_split, prefix_activations
from arf.train import train
from arf.train.config import TrainConfig
from train_fixtures import effnet_bundle, make_anchors, make_benchmark

CPU = torch.device("cpu")


@pytest.fixture()
def env(tmp_path):
    """An EfficientNet-trunk bundle (eval mode), its split after 2 blocks, the 8-image train set, a store."""
    bundle = effnet_bundle()
    bundle.model.eval()
    root = make_benchmark(tmp_path / "b", per_class=2)
    ds = arf.data.get_suite("offline", root).get("train")
    return bundle, find_split(bundle.model, 2), ds, PrefixStore(tmp_path / "store", 1 << 30)


def count_prefix_calls(split) -> list[int]:
    """Wrap ``split.prefix`` to record the batch size of every call."""
    calls: list[int] = []
    orig = split.prefix

    def prefix(x):
        calls.append(len(x))
        return orig(x)

    split.prefix = prefix
    return calls


def same(a: PrefixActs, b: PrefixActs) -> bool:
    return (torch.equal(a.dense.nan_to_num(7.0), b.dense.nan_to_num(7.0)) and torch.equal(a.indices, b.indices)
            and torch.equal(a.labels, b.labels) and a.batch_sizes == b.batch_sizes)


def test_an_entry_is_read_back_after_one_fresh_batch_or_none_if_this_process_wrote_it(env, monkeypatch):
    bundle, split, ds, store = env
    calls = count_prefix_calls(split)
    plain = prefix_activations(split, ds, bundle.preprocess_val, CPU, batch_size=3)
    first = prefix_activations(split, ds, bundle.preprocess_val, CPU, batch_size=3, store=store)
    assert calls == [3, 3, 2] * 2 and len(store.entries()) == 1
    calls.clear()
    again = prefix_activations(split, ds, bundle.preprocess_val, CPU, batch_size=3, store=store)
    assert calls == []  # written by this process and unchanged: trusted as it is
    monkeypatch.setattr(prefix_store, "_CHECKED", {})  # as another process sees it
    other = prefix_activations(split, ds, bundle.preprocess_val, CPU, batch_size=3, store=store)
    assert calls == [3]  # only the check of the first batch
    assert same(plain, first) and same(first, again) and same(first, other)
    assert [len(h) for h, _, _ in again.batches()] == [3, 3, 2]


def test_key_follows_everything_the_activations_depend_on(env, tmp_path):
    bundle, split, ds, _ = env
    tf = bundle.preprocess_val

    def key(batch_size=4, transform=tf, data=None):
        return store_key(split, data or ImageDataset.from_set(ds), transform, batch_size, CPU)

    k = key()
    assert k == key() and k == key(data=ImageDataset.from_set(arf.data.get_suite("offline", ds.root).get("train")))
    assert key(batch_size=3) != k
    assert key(transform=torch.nn.Identity()) != k
    with torch.no_grad():  # a weight after the split: not part of the prefix
        split.trunk.blocks[3][0].conv_pw.weight.add_(1.0)
    assert key() == k
    bundle.model.train()
    assert key() != k
    bundle.model.eval()
    with torch.no_grad():
        split.trunk.blocks[1][0].bn1.running_mean.add_(0.5)  # a batch-norm statistic inside the prefix
    k2 = key()
    assert k2 != k
    path = ds.abspaths()[5]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # the image rewritten (size unchanged)
    assert key() != k2


def test_entry_differing_from_a_fresh_first_batch_is_recomputed(env, caplog):
    bundle, split, ds, store = env
    fresh = prefix_activations(split, ds, bundle.preprocess_val, CPU, batch_size=4, store=store)
    (path,) = store.entries()
    t = load_file(str(path))
    t["dense"][0] += 1e-3  # as if computed by other kernels
    save_file(t, str(path))
    with caplog.at_level(logging.WARNING):
        again = prefix_activations(split, ds, bundle.preprocess_val, CPU, batch_size=4, store=store)
    assert "differs from its first batch" in caplog.text
    assert same(fresh, again) and torch.equal(load_file(str(path))["dense"], fresh.dense)


def test_damaged_entry_is_removed_and_written_again(env, caplog):
    bundle, split, ds, store = env
    fresh = prefix_activations(split, ds, bundle.preprocess_val, CPU, batch_size=4, store=store)
    (path,) = store.entries()
    path.write_bytes(path.read_bytes()[:100])  # a truncated file
    with caplog.at_level(logging.WARNING):
        again = prefix_activations(split, ds, bundle.preprocess_val, CPU, batch_size=4, store=store)
    assert "is unreadable" in caplog.text
    assert same(fresh, again) and store.get(path.stem.removeprefix("prefix-"), len(ds)) is not None


def test_a_pass_failing_on_bad_images_stores_nothing(env):
    bundle, split, ds, store = env
    (Path(ds.root) / ds.paths[2]).write_bytes(b"not a png")  # 1 of 8: over the 5 % limit of unreadable images
    with pytest.raises(ArfError):
        prefix_activations(split, ds, bundle.preprocess_val, CPU, batch_size=4, store=store)
    assert store.entries() == []


def test_unreadable_anchor_row_is_nan_and_counted(env, tmp_path, caplog):
    bundle, split, ds, store = env
    from arf.images import BadInputCounter
    from arf.train.data import AnchorImages

    pool = sorted((Path(ds.root) / "images" / "pool").glob("*.png"))
    paths = [str(p) for p in pool] * 3  # 36 images, 1 unreadable: under the 5 % limit
    paths[4] = str(tmp_path / "missing.png")

    def images():
        return AnchorImages(paths, None, None, BadInputCounter("anchors"))

    first = prefix_activations(split, images(), bundle.preprocess_val, CPU, batch_size=8, store=store)
    assert torch.isnan(first.dense[4]).all() and first.unreadable == 1 and first.batch_sizes == [7, 8, 8, 8, 4]
    with caplog.at_level(logging.INFO):
        again = prefix_activations(split, images(), bundle.preprocess_val, CPU, batch_size=8, store=store)
    assert "36 images (1 unreadable when computed) read from" in caplog.text
    assert same(first, again)


def test_prune_keeps_the_store_under_its_size_least_recently_used_first(tmp_path):
    def acts(n):
        return PrefixActs(torch.zeros(n, 256), torch.arange(n), torch.zeros(n, dtype=torch.long), [n])

    store = PrefixStore(tmp_path, max_bytes=3 * 1024 * 10 + 5000)  # room for three of the entries below
    for i, name in enumerate("abc"):
        store.put(name, acts(10))
        os.utime(store.path(name), (time.time() - 100 + i, time.time() - 100 + i))
    assert store.get("a", 10) is not None  # used now: the most recent
    stale = tmp_path / ".prefix-x.safetensors.abc.tmp"  # a killed writer's leftover
    stale.write_bytes(b"x")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    store.put("d", acts(10))
    assert sorted(p.stem for p in store.entries()) == ["prefix-a", "prefix-c", "prefix-d"]
    assert not stale.exists()
    assert store.put("huge", acts(1000)) is None and not store.path("huge").exists()
    assert PrefixStore(tmp_path, 1 << 20, writable=False).put("e", acts(10)) is None


def test_training_reads_the_store_and_trains_the_same_model(tmp_path, caplog):
    """arf with anchors: finetuning images and anchors through the store give the same weights as without it."""
    root = make_benchmark(tmp_path / "b", per_class=2)
    make_anchors(root, model_id="test:effnet-clip")
    base = {"method": "arf", "data_root": str(root), "batch_size": 4, "anchor_batch_size": 4, "max_steps": 3,
            "freeze_image_blocks": 2, "lambda_cap": 0.0, "lambda_ret": 1.0, "anchors": str(root / "anchors"),
            "progress": False, "tensorboard": False, "model": "test:effnet-clip"}
    finals = []
    for name, store in (("plain", None), ("first", "auto"), ("second", "auto")):
        cfg = TrainConfig(**base, name=name, out_dir=str(tmp_path / "runs"), prefix_store=store)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            run = train(cfg, bundle=effnet_bundle())
        finals.append(load_state_dict(run / "final" / "open_clip_model.safetensors"))
        if name == "second":
            assert caplog.text.count("read from") == 2  # finetuning images and anchors
    assert len(PrefixStore(tmp_path / "runs" / "prefix-store", 1).entries()) == 2
    for other in finals[1:]:
        assert other.keys() == finals[0].keys()
        assert all(torch.equal(other[k], finals[0][k]) for k in other)


def test_train_config_names_the_store_folder(tmp_path):
    assert TrainConfig(out_dir=str(tmp_path)).prefix_store_dir == tmp_path / "prefix-store"
    assert TrainConfig(prefix_store=str(tmp_path / "s")).prefix_store_dir == tmp_path / "s"
    assert TrainConfig(prefix_store=None).prefix_store_dir is None
    assert TrainConfig(prefix_store="").prefix_store_dir is None


def test_lp_features_through_the_store_equal_the_whole_towers(tmp_path, caplog, monkeypatch):
    """A probe's features with the first blocks from the store (feature_prefix_blocks): bit-identical to the whole
    tower's; a second probe reads the store; a split that disagrees with the whole tower is not used."""
    from arf.train.loop import encode_set
    from arf.train.methods import METHODS

    root = make_benchmark(tmp_path / "b", per_class=2)
    ds = arf.data.get_suite("offline", root).get("train")
    bundle = effnet_bundle()

    def features(**kw):
        cfg = TrainConfig(method="lp", out_dir=str(tmp_path / "runs"), **kw)
        return encode_set(METHODS.get("lp")(cfg, bundle, ds), CPU, batch_size=3)

    whole = features()
    assert prefix_store.PrefixStore(tmp_path / "runs" / "prefix-store", 1).entries() == []
    first = features(feature_prefix_blocks=2)
    with caplog.at_level(logging.INFO):
        again = features(feature_prefix_blocks=2)
    assert "read from" in caplog.text
    assert torch.equal(first, whole) and torch.equal(again, whole) and torch.isfinite(whole).all()
    split_cls = type(find_split(bundle.model, 2))
    monkeypatch.setattr(split_cls, "suffix", lambda self, h: torch.zeros(len(h), whole.shape[1]))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert torch.equal(features(feature_prefix_blocks=2), whole)
    assert "not used" in caplog.text
