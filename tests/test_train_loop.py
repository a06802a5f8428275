"""Trainer pieces: step-pure batches (ranks, epochs), gradient accumulation, lpft phases, atomic checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from arf.train import TrainConfig, train
from arf.train.checkpoint import list_checkpoints
from arf.train.data import StepSampler
from train_fixtures import make_benchmark


def _keys(cfg: TrainConfig, n: int, rank: int, world: int, step: int, micro: int = 0) -> list[int]:
    s = StepSampler(cfg, n, 0, rank, world, 0, 100, lambda _: (True, False))
    return [k[1] for k in s.keys(step, micro)]


def test_global_batch_is_split_over_ranks_and_epochs_reshuffle():
    cfg = TrainConfig(batch_size=8, seed=3)
    n = 20  # 2 steps per epoch; 4 images never seen in an epoch (drop_last)
    whole = _keys(cfg, n, 0, 1, 0)
    assert _keys(cfg, n, 0, 2, 0) + _keys(cfg, n, 1, 2, 0) == whole
    epoch0 = set(_keys(cfg, n, 0, 1, 0) + _keys(cfg, n, 0, 1, 1))
    assert len(epoch0) == 16
    assert _keys(cfg, n, 0, 1, 2) != _keys(cfg, n, 0, 1, 0)          # step 2 = epoch 1, a new permutation
    assert _keys(cfg, n, 0, 1, 5) == _keys(cfg, n, 0, 1, 5)          # pure function of the step
    assert _keys(TrainConfig(batch_size=8, seed=4), n, 0, 1, 0) != whole
    acc = TrainConfig(batch_size=8, accum_steps=2, seed=3)
    assert _keys(acc, n, 0, 1, 0, 0) + _keys(acc, n, 0, 1, 0, 1) == whole


def _run(tmp_path, name: str, **kw) -> dict[str, torch.Tensor]:
    root = make_benchmark(tmp_path / "bench", per_class=4)
    fields = {"model": "arf:tiny-clip", "data_root": str(root), "out_dir": str(tmp_path / "runs"), "name": name,
              "batch_size": 8, "max_steps": 2, "lr": 1e-3, "progress": False, "tensorboard": False, **kw}
    run = train(TrainConfig(**fields))
    return load_file(str(run / "final" / "open_clip_model.safetensors"))


def test_gradient_accumulation_equals_the_full_batch_for_cross_entropy(tmp_path):
    import json

    a = _run(tmp_path, "acc1", method="ft", grad_clip=0.0)
    b = _run(tmp_path, "acc2", method="ft", grad_clip=0.0, accum_steps=2)
    # The logged gradient norm is taken before any clipping: a wrong 1/accum scaling would show here.
    ma, mb = ([json.loads(x) for x in (tmp_path / "runs" / n / "metrics.jsonl").read_text().splitlines()]
              for n in ("acc1", "acc2"))
    for ra, rb in zip(ma, mb, strict=True):
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-5)
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
    # Adam divides by sqrt(v): float noise in near-zero gradients moves weights by ~1e-6, far below a step.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_lpft_runs_lp_then_ft_and_keeps_newest_checkpoints(tmp_path):
    import json

    _run(tmp_path, "lpft", method="lpft", max_steps=4, lp_epochs=0.5, checkpoint_every=1, keep_checkpoints=2)
    run = tmp_path / "runs" / "lpft"
    phases = [json.loads(x)["phase"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert phases == ["lp", "train", "train", "train"]
    assert [p.name for p in list_checkpoints(run)] == ["step_00000003", "step_00000004"]
    assert not list((run / "checkpoints").glob(".*partial"))


def test_resume_from_a_finished_run_is_refused_without_flag(tmp_path):
    from arf.errors import ConfigError

    _run(tmp_path, "again", method="lp")
    with pytest.raises(ConfigError, match="pass --resume latest"):
        _run(tmp_path, "again", method="lp")


def test_unreadable_training_image_is_skipped_not_fatal(tmp_path):
    root = make_benchmark(tmp_path / "bench", per_class=4)
    (root / "images" / "train" / "red_0.png").write_bytes(b"not a png")
    run = train(TrainConfig(method="flyp", model="arf:tiny-clip", data_root=str(root), out_dir=str(tmp_path / "r"),
                            batch_size=16, max_steps=1, progress=False, tensorboard=False))
    assert (run / "final" / "open_clip_model.safetensors").is_file()


@pytest.mark.parametrize("method", ["lp", "ft", "flyp"])
def test_unreadable_training_image_with_cached_activations_is_skipped(tmp_path, method):
    """Cached features (lp) and cached frozen-prefix activations (ft, flyp) hold NaN rows for unreadable images;
    those rows leave the batch instead of making the loss NaN and stopping the run as diverged."""
    from train_fixtures import effnet_bundle

    root = make_benchmark(tmp_path / "bench", per_class=8)
    (root / "images" / "train" / "red_0.png").write_bytes(b"not a png")
    cfg = TrainConfig(method=method, model="test:effnet-clip", data_root=str(root), out_dir=str(tmp_path / "r"),
                      batch_size=16, max_steps=3, freeze_image_blocks=4, progress=False, tensorboard=False)
    run = train(cfg, bundle=effnet_bundle())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)


def test_anchor_images_from_webdataset_shard_refs(tmp_path):
    import io
    import json
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from arf.images import BadInputCounter
    from arf.train.data import AnchorImages, read_anchors

    shard = tmp_path / "pool-000.tar"
    with tarfile.open(shard, "w") as tf:
        for key, color in (("a1", (255, 0, 0)), ("a2", (0, 0, 255))):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), color).save(buf, format="PNG")
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))
    d = tmp_path / "anchors"
    d.mkdir()
    pq.write_table(pa.table({"pool_id": [0, 1, 2], "path": [f"{shard}#a1", f"{shard}#a2", f"{shard}#gone"],
                             "text": ["red", "blue", "missing"], "score": [1.0, 1.0, 1.0],
                             "query_class": ["x", "y", "y"]}), d / "anchors.parquet")
    (d / "anchors.json").write_text(json.dumps({"model": "m", "finetune_set": "train"}))
    anchors = read_anchors(d, None)
    images = AnchorImages(anchors.paths, None, None, BadInputCounter("t"))
    assert images.load(0).getpixel((0, 0)) == (255, 0, 0)
    assert images.load(1).getpixel((0, 0)) == (0, 0, 255)
    assert images.load(2) is None and images.counter.n_bad == 1


def test_resume_latest_without_any_checkpoint_starts_fresh(tmp_path):
    root = make_benchmark(tmp_path / "bench", per_class=4)
    cfg = TrainConfig(method="lp", model="arf:tiny-clip", data_root=str(root), out_dir=str(tmp_path / "r"),
                      batch_size=8, max_steps=1, progress=False, tensorboard=False)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "metrics.jsonl").write_text('{"step": 5, "loss": 1.0}\n')  # from a run killed early
    run = train(cfg, resume="latest")
    import json

    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]
