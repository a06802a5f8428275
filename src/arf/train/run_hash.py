"""What makes two training runs the same run: ``train_hash(cfg)``, recorded in every checkpoint and in
``final/arf.json`` (``train.config_hash``), read by ``train_cached`` (skip a finished run, resume an unfinished one)
and ``arf train --resume latest`` (warn on a changed config).
"""

from __future__ import annotations

from pathlib import Path

from arf.config import config_hash
from arf.train.config import TrainConfig

__all__ = ["same_run", "train_hash", "train_hashes"]


def train_hash(cfg: TrainConfig) -> str:
    """Hash of what a run trains (recorded in ``final/arf.json`` as ``train.config_hash``), for caching runs."""
    return _train_hash(cfg)


def train_hashes(cfg: TrainConfig) -> tuple[str, str]:
    """The hashes a checkpoint or ``final/`` of ``cfg``'s run may record: :func:`train_hash`, then the one runs
    recorded before run folders became relocatable (December 2026; it held the captions / anchors paths and the
    model path as given), so that runs finished before stay cached instead of retraining once."""
    return _train_hash(cfg), _train_hash(cfg, legacy=True)


def same_run(recorded: str | None, cfg: TrainConfig) -> bool:
    """Whether a hash a run recorded (checkpoint, ``final/arf.json``) is ``cfg``'s: see :func:`train_hashes`."""
    return recorded is not None and recorded in train_hashes(cfg)


def _train_hash(cfg: TrainConfig, *, legacy: bool = False) -> str:
    # The fields that change what is trained (logging and run folder do not), plus the *content* of the input
    # files named by path: a caption or anchor file regenerated in place (another k, strategy or captioner) or a
    # rebuilt `arf:mini-clip` is another run, which neither a cached final nor `--resume latest` may stand for.
    skip = {"out_dir", "name", "log_every", "checkpoint_every", "keep_checkpoints", "tensorboard", "progress",
            "num_workers", "device", "prefix_store", "feature_prefix_blocks", "grad_checkpointing"}
    if not legacy:
        # Their content is hashed (when read at all); their paths are not, nor the run folder's place in a model
        # path inside it: a run folder moved or copied elsewhere (`arf demo` keeps captions, anchors and the
        # wise-probe's interpolated models inside it) holds the same runs, not ones to train again.
        skip |= {"captions", "anchors"}
    fields = {k: v for k, v in vars(cfg).items() if k not in skip}
    if not legacy:
        fields["model"] = _model_key(cfg.model, cfg.out_dir)
    return config_hash(fields, _input_digests(cfg))


def _model_key(model: str, out_dir: str) -> str:
    """``model`` as the hash sees it: a path inside the run's ``out_dir`` relative to it, anything else as given."""
    from arf.models.factory import is_registered_id

    if is_registered_id(model):
        # An id (arf:…, openclip:…), not a path: resolved against the working directory it could fall "inside" an
        # out_dir of "." and hash differently from another directory.
        return model
    try:
        inside = Path(model).expanduser().resolve().relative_to(Path(out_dir).expanduser().resolve())
    except (ValueError, OSError):
        return model
    return f"<out_dir>/{inside.as_posix()}"


def _input_digests(cfg: TrainConfig) -> dict[str, str]:
    from arf.train.config import anchor_parquet

    out: dict[str, str] = {}
    if cfg.lambda_cap > 0 and cfg.captions:
        out["captions"] = _file_digest(Path(cfg.captions).expanduser())
    if cfg.lambda_ret > 0 and cfg.anchors:
        out["anchors"] = _file_digest(anchor_parquet(cfg.anchors))
    from arf.data.suite_file import is_suite_file

    if is_suite_file(cfg.suite) and Path(cfg.suite).expanduser().is_file():
        # A suite file edited in place (another train folder, other class names) is another run.
        out["suite"] = _file_digest(Path(cfg.suite).expanduser())
    if cfg.model == "arf:mini-clip":
        from arf.models.mini_clip import built_base_stamp

        out["model"] = built_base_stamp()
    return out


def _file_digest(path: Path) -> str:
    """sha256 of a file, memoised by (path, size, mtime): the hash is taken at every checkpoint."""
    from arf.io import sha256_file

    try:
        st = path.stat()
    except OSError:
        return "missing"  # the config checks name the missing file before any training starts
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


_DIGESTS: dict[tuple[str, int, int], str] = {}
