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


def train_cached(cfg: TrainConfig) -> Path:
    """``cfg``'s ``final/`` folder: the cached one when it was made by this config, else trained (resumed where a
    checkpoint of this config exists)."""
    from arf.train.loop import train, train_hash

    want = train_hash(cfg)
    final = cfg.run_dir / "final"
    if final_matches(final, want):
        log.info("train %s (%s): cached (%s)", cfg.method, cfg.run_dir.name, final)
        return final
    train(cfg, resume=resume_or_fresh(cfg.run_dir, want))
    return final


def resume_or_fresh(run_dir: Path, want_hash: str) -> str | None:
    """``"latest"`` when the run's newest checkpoint was made by this very config; otherwise a fresh start.

    A run folder left by a different config (e.g. an older learning rate) is moved aside to
    ``<run>.stale-<hash>``: resuming it would mix two schedules into one model.
    """
    states = sorted((run_dir / "checkpoints").glob("step_*/train_state.json"))
    if not states:
        return None
    have = read_json(states[-1]).get("config_hash")
    if have == want_hash:
        return "latest"
    stale = run_dir.with_name(f"{run_dir.name}.stale-{have}")
    shutil.rmtree(stale, ignore_errors=True)
    run_dir.rename(stale)
    log.warning("run %s was made by another config (%s); moved to %s, training from scratch", run_dir, have, stale)
    return None


def final_matches(final: Path, want_hash: str) -> bool:
    """Whether ``final/arf.json`` records ``want_hash`` as the config that trained it."""
    meta = final / "arf.json"
    if not meta.is_file():
        return False
    return read_json(meta).get("train", {}).get("config_hash") == want_hash
