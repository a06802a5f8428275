"""Training refuses an anchor set retrieved for another finetuning set's class names (issue 7, bad configuration).

Every suite names its finetuning set ``train`` and the model id may match, so the set name and model in the
sidecar cannot tell two benchmarks apart; the class list can. The sidecar here is written by the real
``arf retrieve`` code (``embed_pool`` + ``retrieve`` with ``arf:tiny-clip``), not by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arf.errors import ConfigError
from train_fixtures import NAMES, make_benchmark


def _anchors_for(root: Path, out: Path) -> Path:
    """Anchors retrieved from ``root``'s pool for ``root``'s train set, as `arf pool embed` + `arf retrieve` do."""
    import arf.data
    import arf.models
    from arf.anchors.config import PoolConfig, RetrieveConfig
    from arf.anchors.pool import embed_pool
    from arf.anchors.retrieve import retrieve
    from arf.anchors.sources import resolve_set

    bundle = arf.models.create_model("arf:tiny-clip", device="cpu")
    embed_pool(PoolConfig(source=str(root / "pool.parquet"), out=str(out / "emb"), shard_size=8, progress=False),
               bundle)
    images = resolve_set(arf.data.get_suite("offline", str(root)).get("train"))
    res = retrieve(RetrieveConfig(emb=str(out / "emb"), out=str(out / "anchors"), model="arf:tiny-clip", k=2,
                                  exclude=[]), bundle, images)
    return res.path.parent


def _train(root: Path, anchors: Path, out: Path) -> Path:
    from arf.train import TrainConfig, train

    return train(TrainConfig(method="arf", model="arf:tiny-clip", data_root=str(root), out_dir=str(out),
                             lambda_ret=1.0, anchors=str(anchors), anchor_batch_size=4, batch_size=4, max_steps=1,
                             progress=False, tensorboard=False))


def test_anchors_for_another_sets_class_names_are_refused_before_training(tmp_path: Path) -> None:
    a = make_benchmark(tmp_path / "a", per_class=2)
    anchors = _anchors_for(a, tmp_path / "a-out")
    meta = json.loads((anchors / "anchors.json").read_text())
    assert meta["finetune_set"] == "train" and meta["n_classes"] == len(NAMES)

    # The same anchors train on the set they were retrieved for.
    assert (_train(a, anchors, tmp_path / "runs-a") / "final").is_dir()

    # Benchmark b: also a set 'train' with 4 classes, same model, other class names (here: a renaming).
    b = make_benchmark(tmp_path / "b", per_class=2)
    other = ["crimson", "lime", "navy", "gold"]
    (b / "classnames" / "train.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError) as e:
        _train(b, anchors, tmp_path / "runs-b")
    msg = str(e.value)
    assert msg.startswith(f"anchors: {anchors} were retrieved for other class names")
    assert meta["classnames_hash"] in msg and "finetuning set 'train'" in msg and "crimson" in msg
    from arf.anchors.sources import ImageSet
    ours = ImageSet(name="train", root=Path("."), paths=[], classnames=other).classnames_hash()
    assert ours in msg and ours != meta["classnames_hash"]
    # Refused before any heavy work: no config, log or checkpoint in the run folder.
    run_b = tmp_path / "runs-b" / "arf"
    assert not run_b.exists() or not any(run_b.iterdir())


@pytest.mark.parametrize("edit", [
    {"classnames_hash": "0123456789abcdef"},              # same count, other names
    {"n_classes": 5},                                      # an old sidecar's count disagrees
    {"classnames_hash": None, "n_classes": 3},             # no hash, only the count
])
def test_check_against_data_compares_hash_and_count(edit: dict) -> None:
    from arf.anchors.sources import ImageSet
    from arf.train import TrainConfig
    from arf.train.config import check_against_data

    cfg = TrainConfig(method="arf", lambda_ret=1.0, anchors="x/anchors", batch_size=4)
    good = {"model": "m", "finetune_set": "train", "n_classes": 4,
            "classnames_hash": ImageSet(name="train", root=Path("."), paths=[], classnames=NAMES).classnames_hash()}
    check_against_data(cfg, 8, 1, "train", "m", good, classnames=NAMES)      # passes
    check_against_data(cfg, 8, 1, "train", "m", {"model": "m"}, classnames=NAMES)  # hand-made sidecar: no claim
    bad = {k: v for k, v in {**good, **edit}.items() if v is not None}
    with pytest.raises(ConfigError, match=r"^anchors: x/anchors were retrieved for other class names"):
        check_against_data(cfg, 8, 1, "train", "m", bad, classnames=NAMES)
