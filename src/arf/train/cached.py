"""Train a config unless its run folder already holds the final model of that very config.

Used by the stages that train many runs in turn (``arf demo``, ``arf wise-probe``): a re-run skips what is done,
resumes a run killed mid-way from its newest checkpoint, and never resumes or keeps a run another config made.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from arf.io import read_json
from arf.train.config import TrainConfig

log = logging.getLogger(__name__)


def train_cached(cfg: TrainConfig, *, keep_resume_points: bool = True) -> Path:
    """``cfg``'s ``final/`` folder: the cached one when it was made by this config, else trained (resumed where a
    checkpoint of this config exists).

    ``keep_resume_points=False`` removes the run's ``checkpoints/`` once ``final/`` is there (also for a run found
    cached): they only serve to resume an unfinished run, and hold the optimizer state besides the weights — 330 MB
    a run for the offline base, 8 GB over ``arf demo --full``'s 24 runs."""
    from arf.train.loop import train
    from arf.train.run_hash import train_hashes

    want = train_hashes(cfg)
    final = cfg.run_dir / "final"
    if final_matches(final, want):
        log.info("train %s (%s): cached (%s)", cfg.method, cfg.run_dir.name, final)
    else:
        train(cfg, resume=resume_or_fresh(cfg.run_dir, want))
    if not keep_resume_points and final_matches(final, want):
        shutil.rmtree(cfg.run_dir / "checkpoints", ignore_errors=True)
    return final


def resume_or_fresh(run_dir: Path, want: str | tuple[str, ...]) -> str | None:
    """``"latest"`` when the run's newest checkpoint was made by this very config; otherwise a fresh start.

    A run folder left by a different config (e.g. an older learning rate) is moved aside to
    ``<run>.stale-<hash>``: resuming it would mix two schedules into one model. A finished run whose resume points
    were removed (``keep_resume_points=False``) is recognised by its ``final/``.
    """
    states = sorted((run_dir / "checkpoints").glob("step_*/train_state.json"))
    if states:
        have = read_json(states[-1]).get("config_hash")
        if have in _as_tuple(want):
            return "latest"
    elif (run_dir / "final" / "arf.json").is_file():
        have = final_hash(run_dir / "final")
        if have in _as_tuple(want):
            return None  # finished by this config: nothing to resume, nothing stale
    else:
        return None
    stale = run_dir.with_name(f"{run_dir.name}.stale-{have}")
    shutil.rmtree(stale, ignore_errors=True)
    run_dir.rename(stale)
    log.warning("run %s was made by another config (%s); moved to %s, training from scratch", run_dir, have, stale)
    return None


def final_hash(final: Path) -> str | None:
    """The train hash ``final/arf.json`` records (of the config that trained it), None without one."""
    meta = final / "arf.json"
    return read_json(meta).get("train", {}).get("config_hash") if meta.is_file() else None


def final_matches(final: Path, want: str | tuple[str, ...]) -> bool:
    """Whether ``final/arf.json`` records ``want`` (or one of them: ``train_hashes``) as the config that trained
    it."""
    return final_hash(final) in _as_tuple(want)


def _as_tuple(want: str | tuple[str, ...]) -> tuple[str, ...]:
    return (want,) if isinstance(want, str) else want
