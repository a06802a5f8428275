"""A val split held out of a class-folder training set (ImageNet train → ``imagenet/heldout``).

Choices of hyperparameters, WiSE-FT α or a read-out (``arf wise-probe``) belong on a val split, never on the test
sets; ImageNet has none (its val set is the ID test set). :func:`hold_out` moves ``per_class`` images of every
class folder of ``src`` into the same class folder under ``dst``, so training on ``src`` can never see them. Which
images go is a pure function of the seed and each class's file names (a hash rank), not of listing order, so the
same split comes out on every machine, and a run killed half-way is finished by running it again. :func:`restore`
moves them back.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from arf.data.formats import IMAGE_EXTS
from arf.errors import ConfigError, InputFileError
from arf.io import read_json, write_json

log = logging.getLogger(__name__)

INFO_FILE = "holdout.json"


@dataclass
class HoldoutResult:
    classes: int
    moved: int        # by this call
    held_out: int     # in dst after it


def _images(d: Path) -> list[str]:
    return sorted(f.name for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS) if d.is_dir() else []


def _rank(seed: int, cls: str, name: str) -> str:
    return hashlib.sha1(f"{seed}/{cls}/{name}".encode()).hexdigest()


def chosen(seed: int, cls: str, names: list[str], per_class: int) -> list[str]:
    """The ``per_class`` names of one class that are held out (the lowest hash ranks)."""
    return sorted(names, key=lambda n: _rank(seed, cls, n))[:per_class]


def _classes(src: Path) -> list[str]:
    if not src.is_dir():
        raise InputFileError(f"holdout: source folder {src} does not exist")
    classes = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise InputFileError(f"holdout: {src} has no class folders")
    return classes


def hold_out(src: str | Path, dst: str | Path, per_class: int, seed: int = 0) -> HoldoutResult:
    """Move ``per_class`` images of each class folder of ``src`` to ``dst/<class>/`` (resumable, idempotent)."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if per_class < 1:
        raise ConfigError(f"--per-class must be >= 1, got {per_class}")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise ConfigError(f"holdout: {dst} is inside the source {src}; training would read it as a class folder")
    info = dst / INFO_FILE
    if info.is_file():
        done = read_json(info)
        if (done.get("per_class"), done.get("seed")) != (per_class, seed):
            raise ConfigError(f"holdout: {dst} holds a split of per_class={done.get('per_class')}, "
                              f"seed={done.get('seed')}; restore it first (--undo) or choose another folder")
    classes = _classes(src)
    # Every class is checked before anything moves: a class too small for the split fails the whole call.
    plan: dict[str, list[str]] = {}
    for cls in classes:
        have, held = _images(src / cls), _images(dst / cls)
        names = have + held
        if len(names) <= per_class:
            raise ConfigError(f"holdout: class folder {src / cls} has {len(names)} images; holding out "
                              f"{per_class} would leave none to train on")
        in_src = set(have)
        plan[cls] = [n for n in chosen(seed, cls, names, per_class) if n in in_src]
    write_json(info, {"src": str(src), "per_class": per_class, "seed": seed, "classes": len(classes)})
    moved = 0
    for cls, names in plan.items():
        if names:
            (dst / cls).mkdir(parents=True, exist_ok=True)
        for n in names:
            shutil.move(str(src / cls / n), str(dst / cls / n))
            moved += 1
    held_out = sum(len(_images(dst / c)) for c in classes)
    log.info("held out %d images (%d moved now) of %d classes: %s -> %s", held_out, moved, len(classes), src, dst)
    return HoldoutResult(classes=len(classes), moved=moved, held_out=held_out)


def restore(src: str | Path, dst: str | Path) -> int:
    """Move every held-out image in ``dst`` back to its class folder in ``src``; returns how many moved."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not (dst / INFO_FILE).is_file():
        raise InputFileError(f"holdout: {dst} has no {INFO_FILE}; it is not a held-out split")
    moved = 0
    for cls in sorted(d.name for d in dst.iterdir() if d.is_dir()):
        for n in _images(dst / cls):
            target = src / cls / n
            if target.exists():
                raise InputFileError(f"holdout: {target} exists in the source already; not overwritten")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(dst / cls / n), str(target))
            moved += 1
        if not any((dst / cls).iterdir()):
            (dst / cls).rmdir()
    (dst / INFO_FILE).unlink()
    return moved
