"""``train_cached``: a finished run of the same config is kept, a run of another config is moved aside, not resumed."""

from __future__ import annotations

from pathlib import Path

from arf.train import TrainConfig
from arf.train.cached import final_matches, resume_or_fresh, train_cached
from arf.train.run_hash import train_hash
from train_fixtures import make_benchmark


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    root = tmp_path / "bench"
    if not root.exists():
        make_benchmark(root, per_class=4)
    fields = {"method": "ft", "model": "arf:tiny-clip", "data_root": str(root), "out_dir": str(tmp_path / "runs"),
              "name": "ft-s0", "batch_size": 8, "max_steps": 2, "lr": 1e-3, "progress": False, "tensorboard": False,
              "checkpoint_every": 1, **kw}
    return TrainConfig(**fields)


def test_a_finished_run_of_the_same_config_is_not_trained_again(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    final = train_cached(cfg)
    assert final_matches(final, train_hash(cfg))
    weights = final / "open_clip_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert train_cached(cfg) == final and weights.stat().st_mtime_ns == stamp
    # Its own checkpoints are resumed, not restarted.
    assert resume_or_fresh(cfg.run_dir, train_hash(cfg)) == "latest"


def test_a_run_folder_of_another_config_is_moved_aside(tmp_path: Path) -> None:
    old = _cfg(tmp_path, lr=1e-3)
    train_cached(old)
    new = _cfg(tmp_path, lr=2e-3)
    assert not final_matches(new.run_dir / "final", train_hash(new))
    final = train_cached(new)
    assert final_matches(final, train_hash(new))
    stale = new.run_dir.with_name(f"{new.run_dir.name}.stale-{train_hash(old)}")
    assert final_matches(stale / "final", train_hash(old))  # the other config's run, whole, beside the new one


def test_without_resume_points_a_finished_run_keeps_only_final_and_is_still_recognised(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    final = train_cached(cfg, keep_resume_points=False)
    assert final_matches(final, train_hash(cfg)) and not (cfg.run_dir / "checkpoints").exists()
    stamp = (final / "open_clip_model.safetensors").stat().st_mtime_ns
    assert train_cached(cfg, keep_resume_points=False) == final  # cached, not retrained
    assert (final / "open_clip_model.safetensors").stat().st_mtime_ns == stamp
    # A run found cached with its resume points loses them too (the demo's folders from before the option).
    kept = _cfg(tmp_path, name="ft-s1")
    train_cached(kept)
    assert (kept.run_dir / "checkpoints").is_dir()
    train_cached(kept, keep_resume_points=False)
    assert not (kept.run_dir / "checkpoints").exists()
    # Another config over a finished run that has no resume points left: that run is moved aside whole too.
    new = _cfg(tmp_path, lr=2e-3)
    final_new = train_cached(new, keep_resume_points=False)
    assert final_matches(final_new, train_hash(new))
    stale = new.run_dir.with_name(f"{new.run_dir.name}.stale-{train_hash(cfg)}")
    assert final_matches(stale / "final", train_hash(cfg))


def test_a_copied_run_folder_is_cached_there_too(tmp_path: Path) -> None:
    import shutil

    cfg = _cfg(tmp_path, name="ft-s0")
    final = train_cached(cfg, keep_resume_points=False)
    shutil.copytree(tmp_path / "runs", tmp_path / "copy")
    there = _cfg(tmp_path, out_dir=str(tmp_path / "copy"))
    weights = there.run_dir / "final" / "open_clip_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert train_cached(there, keep_resume_points=False) == there.run_dir / "final" != final
    assert weights.stat().st_mtime_ns == stamp, "found cached, not trained again"


def test_a_run_recorded_under_the_legacy_hash_is_kept_and_resumed(tmp_path: Path) -> None:
    from arf.io import read_json, write_json
    from arf.train.run_hash import train_hashes

    cfg = _cfg(tmp_path)
    final = train_cached(cfg)
    current, legacy = train_hashes(cfg)
    # What a run finished before run folders became relocatable recorded.
    meta = read_json(final / "arf.json")
    meta["train"]["config_hash"] = legacy
    write_json(final / "arf.json", meta)
    for state in (cfg.run_dir / "checkpoints").glob("step_*/train_state.json"):
        write_json(state, {**read_json(state), "config_hash": legacy})
    assert final_matches(final, train_hashes(cfg)) and not final_matches(final, current)
    assert resume_or_fresh(cfg.run_dir, train_hashes(cfg)) == "latest"
    stamp = (final / "open_clip_model.safetensors").stat().st_mtime_ns
    assert train_cached(cfg) == final and (final / "open_clip_model.safetensors").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob("runs/*.stale-*"))
