"""Build the offline robustness benchmark from registry packages: ``arf data build``.

Design (see docs/DATA.md): each split draws from its own *design families*, so no emoji design sits on both
sides of a line:

=============  =====================================================  ==========================================
split          images                                                 families
=============  =====================================================  ==========================================
alignment      every base emoji, flags, typeset digits (+ texts)      noto (SVG, Google PNG), twemoji (SVG,
                                                                      Twitter PNG), typeset-digits, symbola
                                                                      (black-and-white glyphs), circle-flags,
                                                                      flagpack
pool           every base emoji, country flags, Tux Paint drawings,  openmoji, tuxpaint-drawing, openclipart
               OpenClipArt drawings with their titles (revision 7)
train/val/id   train classes as stickers on coloured backgrounds      emojione
shift-3d       train classes, 3D renders                              fluent (3D)
shift-lineart  train classes, black-and-white line art                fluent (high contrast)
shift-photo    train classes, cut-out photos whose caption names one  tuxpaint-photo
zs-emoji       held-out classes                                       fluent (flat)
zs-flags       country flags -> country names                         flag-icons
zs-mnist/...   MNIST, Fashion-MNIST, Animal-MNIST test images         mnist, fashion-mnist, animal-mnist
=============  =====================================================  ==========================================

The alignment corpus holds the *concepts* of every class (train and held-out), never a test family. The build
is deterministic: sorted inputs, a fixed seed per image, and a manifest with the sha256 of every file.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from arf.data.offline import openclipart as oca
from arf.data.offline import sources as src
from arf.data.offline.checks import LeakError, check_disjoint
from arf.data.offline.render import Job, job_seed, run_job, run_jobs_star
from arf.errors import ConfigError
from arf.io import read_json, sha256_file, write_json, write_parquet

log = logging.getLogger(__name__)

VERSION = "v1"
# Bumped when the planner's output changes for the same config (a build of an older revision is rebuilt):
# 2 = Animal-MNIST class names corrected (bird/sheep, not lion/monkey); 3 = shift-photo scored over the classes it
# holds (a class mask into the train label space, as ImageNet-R / -A), no longer over all 300; 4 = the pool holds
# OpenMoji's country flags (the web had flag emoji in its two emoji families, the pool had none).
# 5 = the val-shift-unseen set (FxEmoji and Streamline renders of the finetuning classes; no other set changes);
# 6 = val-zs-unseen (the same designs' renders of the held-out emoji classes; no other set changes).
# 7 = the pool holds the OpenClipArt drawings with their titles (the web-like part; retrieval filters it by the base's
# image–text cosine, RetrieveConfig.pair_floor; no other split changes).
BUILD_REVISION = 7
CLASS_CATEGORIES = ("Animals & Nature", "Food & Drink", "Objects", "Travel & Places", "Activities")
# Clock faces and map pictograms have names that no picture disambiguates ("eleven thirty").
EXCLUDED_SUBCATEGORIES = ("time", "place-map", "award-medal", "lock", "sound", "light & video")

OPENCLIPART_FAMILY = "openclipart"
EMOJI_TEMPLATES = ["an emoji of a {}.", "a {}.", "an icon of a {}.", "a picture of a {}.", "a drawing of a {}."]
PHOTO_TEMPLATES = ["a photo of a {}.", "a cut-out photo of a {}.", "a picture of a {}.", "a {}."]
FLAG_TEMPLATES = ["the flag of {}.", "a flag of {}.", "the national flag of {}."]
DIGIT_TEMPLATES = ['a photo of the number: "{}".', "the number {}.", "a handwritten digit {}."]
# Emoji designs in no other split, for val-shift-unseen / val-zs-unseen (docs/DATA.md): FxEmoji and Streamline Emojis.
UNSEEN_VAL_DESIGNS = ("fxemoji", "streamline-emojis")
SILHOUETTE_TEMPLATES = ["a silhouette of a {}.", "a small black and white picture of a {}.", "a {}."]
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@dataclass
class BuildConfig:
    """What to build; every field is part of the benchmark's identity (written to manifest.json)."""

    out: str | None = None  # default: data_dir()/offline/<version>
    version: str = VERSION
    seed: int = 0
    image_size: int = 112
    n_train_classes: int = 300
    n_zeroshot_classes: int = 200
    train_per_class: int = 8
    # 4 draws per class (eleventh session): with 1, val's 300 images under-counted the finetuned models' errors on
    # `id` 1.8-2.7x and hid a 3-point ID loss (docs/RESULTS.md §2). Job seeds are per path: the first 300 are unchanged.
    val_per_class: int = 4
    id_per_class: int = 2
    mnist_per_class: int = 50
    align_extra_per_class: int = 2  # extra jittered renders per benchmark class in the alignment corpus
    align_glyphs: bool = True  # Symbola black-and-white glyphs of every base emoji it covers, in the alignment
    align_flag_designs: bool = True  # circle-flags and flagpack renders of every country, in the alignment
    workers: int = 2
    npm_root: str | None = None  # default: arf.paths.npm_dir()
    tux_root: str = str(src.TUX_DIR)
    pool_openclipart: bool = True  # revision 7: OpenClipArt drawings in the pool (docs/DATA.md)
    openclipart_root: str = str(oca.OPENCLIPART_DIR)
    fashion_root: str = str(src.FASHION_DIR)
    limit_emoji: int | None = None  # tests: build a tiny benchmark from the first N base emoji

    def identity(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for k in ("out", "workers", "npm_root"):
            d.pop(k)
        d["revision"] = BUILD_REVISION
        return d


@dataclass
class Row:
    rel: str
    label: int = -1
    classname: str = ""
    family: str = ""
    text: str = ""


@dataclass
class Plan:
    jobs: dict[str, Job] = field(default_factory=dict)  # rel -> job (one job per image file)
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> spec (role, classnames, rows…)
    pairs: dict[str, list[Row]] = field(default_factory=dict)
    copies: dict[str, Path] = field(default_factory=dict)  # rel -> source file copied as-is (none used now)

    def add(self, job: Job) -> str:
        if job.rel in self.jobs:
            raise ValueError(f"two images planned at {job.rel}")
        self.jobs[job.rel] = job
        return job.rel


def article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def _words(s: str) -> str:
    return s.replace("-", " ").replace("&", "and")


def emoji_texts(e: src.Emoji, rng: np.random.Generator, n: int) -> list[str]:
    """Varied captions, so the base learns language (names, aliases, groups), not a fixed label string."""
    name, sub, cat = e.name, _words(e.subcategory.split("-")[-1]), _words(e.category).lower()
    a = article(name)
    bank = [
        f"{name}",
        f"{a} {name}",
        f"{a} {name}.",
        f"an emoji of {a} {name}.",
        f"{name} emoji",
        f"an icon of {a} {name}",
        f"a picture of {a} {name}.",
        f"a drawing of {a} {name}.",
        f"{a} {name}, a kind of {sub}",
        f"{cat}: {name}",
        f"a {sub} icon showing {a} {name}",
        f"a small colourful {name}",
        f"{a} {name} on a white background",
    ]
    bank += [f"{alias}" for alias in e.aliases] + [f"{a} {name}, also called {alias}" for alias in e.aliases]
    idx = rng.choice(len(bank), size=min(n, len(bank)), replace=False)
    return [bank[i] for i in sorted(idx)]


def stamp_slug(rel: str) -> str:
    """A flat file name for a stamp; keeps the extension (ladybug.png and ladybug.svg both exist)."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", rel)


def _rng(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng(job_seed(seed, ":".join(map(str, parts))))


def clean_caption(caption: str) -> str:
    first = re.split(r"(?<=[.!?])\s", caption.strip())[0]
    return re.sub(r"[“”\"]", "", first).strip()


@cache
def _name_rx(name: str) -> re.Pattern[str]:
    tail = r"(s|es)?(?=$|[,;:!?.)]| (with|in|on|of|called|that|which|and|from|for|to|at|is|are|has|like)\b)"
    return re.compile(rf"\b{re.escape(name)}{tail}")


def match_caption(caption: str, names: list[str]) -> str | None:
    """The longest class name that appears as whole words (optionally plural) in the caption's first sentence."""
    text = clean_caption(caption).lower()
    # The name must end the noun phrase ("a red kangaroo", "a glass of milk"), so "a rainbow lorikeet" is no
    # rainbow: after the match comes the sentence end, punctuation or a linking word.
    hits = [n for n in names if n in text and _name_rx(n).search(text)]
    return max(hits, key=len) if hits else None


# ---------------------------------------------------------------------------------------------------------------
# planning


def select_classes(cfg: BuildConfig, root: Path | None) -> tuple[list[src.Emoji], list[src.Emoji], dict]:
    """Train and held-out (zero-shot) emoji classes, and the resources each family offers per code point."""
    table = src.emoji_table(root)
    sets = {
        k: src.icon_set(k, root)
        for k in ("noto", "twemoji", "openmoji", "fluent-emoji-flat", "fluent-emoji-high-contrast", "emojione")
    }
    three_d = src.fluent_3d(root)
    # emojione has no code-point map: join it by CLDR slug through the other sets.
    slug_of = {cp: slug for cp, slug in sets["noto"].chars.items()}
    for k in ("twemoji", "fluent-emoji-flat", "openmoji"):
        for cp, slug in sets[k].chars.items():
            slug_of.setdefault(cp, slug)
    emojione_slugs = set(sets["emojione"].icons)
    res = {"sets": sets, "3d": three_d, "slug_of": slug_of}
    candidates: list[src.Emoji] = []
    seen_names: set[str] = set()
    for cp in sorted(table):
        e = table[cp]
        if e.category not in CLASS_CATEGORIES or e.subcategory in EXCLUDED_SUBCATEGORIES or "-" in cp:
            continue
        need = ("noto", "twemoji", "openmoji", "fluent-emoji-flat")
        if not all(cp in sets[k].chars for k in need) or e.name in seen_names:
            continue
        seen_names.add(e.name)
        candidates.append(e)
    if cfg.limit_emoji:
        candidates = candidates[: cfg.limit_emoji]
    # Train classes need every train/shift family; classes with a Tux Paint photo go first (shift-photo size).
    trainable = [
        e
        for e in candidates
        if slug_of.get(e.cp) in emojione_slugs and e.cp in sets["fluent-emoji-high-contrast"].chars and e.cp in three_d
    ]
    stamps = [s for s in src.tux_stamps(Path(cfg.tux_root)) if s.photo]
    names = [e.name for e in trainable]
    with_photo = {match_caption(s.caption, names) for s in stamps} - {None}
    order = np.random.default_rng(cfg.seed).permutation(len(trainable))
    ranked = sorted((0 if trainable[i].name in with_photo else 1, rank) for rank, i in enumerate(order))
    train_idx = [order[rank] for _, rank in ranked[: cfg.n_train_classes]]
    train = sorted((trainable[i] for i in train_idx), key=lambda e: e.name)
    train_cps = {e.cp for e in train}
    rest = [e for e in candidates if e.cp not in train_cps]
    pick = np.random.default_rng(cfg.seed + 1).permutation(len(rest))[: cfg.n_zeroshot_classes]
    held = sorted((rest[i] for i in pick), key=lambda e: e.name)
    return train, held, res


def shift_set(rows: list[Row], templates: list[str]) -> dict[str, Any]:
    """A domain-shift set: the finetuning classes in another design family, scored in the train label space."""
    return {"role": "shift", "classnames": "train", "templates": templates, "rows": rows, "reference": "offline-train"}


def masked_shift_set(name: str, rows: list[Row], train_names: list[str], templates: list[str],
                     role: str = "shift") -> dict[str, Any]:
    """A domain-shift set that holds only some finetuning classes, scored over those (ImageNet-R / -A's convention).

    Why: a 300-way argmax would let classes the set never shows take its predictions, which measures the label
    space's size as much as robustness. Labels index the set's own class list (train order); ``class_mask`` holds
    each one's column in the train label space, so a trained 300-way head is sliced to the same classes.
    """
    own, class_list, mask = held_classes(rows, train_names)
    return {"role": role, "classnames": name, "class_list": class_list, "class_mask": mask, "templates": templates,
            "rows": own, "reference": "offline-train"}


def held_classes(rows: list[Row], names: list[str]) -> tuple[list[Row], list[str], list[int]]:
    """The rows relabelled to the classes they hold (in ``names`` order), those classes' names, and each one's
    position in ``names``."""
    mask = sorted({r.label for r in rows})
    pos = {c: i for i, c in enumerate(mask)}
    own = [Row(r.rel, pos[r.label], r.classname, r.family, r.text) for r in rows]
    return own, [names[c] for c in mask], mask


def name_key(name: str) -> str:
    """Letters and digits only, lower case: "Dog-Face" and "dogface" are one key."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def icons_by_name(iset: src.IconSet, table: dict[str, src.Emoji]) -> dict[str, str]:
    """Code point -> slug of the icons of a set without code points (an empty chars.json) whose name is an emoji's
    CLDR or Unicode name ("eggplant" / "aubergine"), compared as ``name_key``. A variant number ("astronaut-1") is
    dropped, the lowest variant kept; a name that two emoji could claim matches neither."""
    slugs: dict[str, str] = {}
    for slug in sorted(iset.icons):  # "cloud" < "cloud-1" < "cloud-2": the plain or first variant wins
        slugs.setdefault(name_key(re.sub(r"-\d+$", "", slug)), slug)
    keys = {cp: (name_key(e.name), name_key(e.unicode_name)) for cp, e in table.items()}  # the CLDR name first
    claims: dict[str, set[str]] = {}
    for cp, pair in keys.items():
        for key in set(pair) - {""}:
            claims.setdefault(key, set()).add(cp)
    out: dict[str, str] = {}
    for cp, pair in keys.items():
        for key in pair:
            if key in slugs and claims.get(key) == {cp}:
                out[cp] = slugs[key]
                break
    return out


def plan(cfg: BuildConfig) -> Plan:
    root = Path(cfg.npm_root) if cfg.npm_root else None
    size, seed = cfg.image_size, cfg.seed
    p = Plan()
    train, held, res = select_classes(cfg, root)
    sets, three_d, slug_of = res["sets"], res["3d"], res["slug_of"]
    if len(train) < 2 or len(held) < 2:
        raise ConfigError(f"offline build: only {len(train)} train and {len(held)} held-out classes available")
    train_names = [e.name for e in train]

    def job(rel: str, kind: str, payload: Any, style: str) -> str:
        return p.add(Job(rel, kind, payload, style, size, job_seed(seed, rel)))

    def iconify(key: str, cp: str, rel: str, style: str) -> str:
        iset = sets[key]
        slug = iset.chars.get(cp) or slug_of.get(cp)
        return job(rel, "svg", iset.svg(slug, size), style)

    # --- finetuning task: emojione stickers -------------------------------------------------------------
    for split, n, role in (
        ("train", cfg.train_per_class, "train"),
        ("val", cfg.val_per_class, "val"),
        ("id", cfg.id_per_class, "id"),
    ):
        rows = []
        for label, e in enumerate(train):
            slug = slug_of[e.cp]
            for k in range(n):
                rel = f"images/{split}/emojione/{e.cp}_{k}.png"
                job(rel, "svg", sets["emojione"].svg(slug, size), "train")
                rows.append(Row(rel, label, e.name, "emojione"))
        p.sets[split] = {"role": role, "classnames": "train", "templates": EMOJI_TEMPLATES, "rows": rows}

    # --- domain shift: same classes, other families -------------------------------------------------------
    rows = []
    for label, e in enumerate(train):
        rel = f"images/shift-3d/fluent-3d/{e.cp}.png"
        job(rel, "bytes", three_d[e.cp], "plain")
        rows.append(Row(rel, label, e.name, "fluent"))
    p.sets["shift-3d"] = shift_set(rows, EMOJI_TEMPLATES)
    rows = []
    for label, e in enumerate(train):
        rel = iconify("fluent-emoji-high-contrast", e.cp, f"images/shift-lineart/fluent-hc/{e.cp}.png", "plain")
        rows.append(Row(rel, label, e.name, "fluent"))
    p.sets["shift-lineart"] = shift_set(rows, EMOJI_TEMPLATES)
    rows = []
    tux = Path(cfg.tux_root)
    for s in src.tux_stamps(tux):
        name = match_caption(s.caption, train_names) if s.photo else None
        if name is None:
            continue
        rel = f"images/shift-photo/tuxpaint/{stamp_slug(s.rel)}.png"
        job(rel, "bytes", (tux / s.rel).read_bytes(), "plain")
        rows.append(Row(rel, train_names.index(name), name, "tuxpaint-photo", text=s.caption))
    p.sets["shift-photo"] = masked_shift_set("shift-photo", rows, train_names, PHOTO_TEMPLATES)

    # --- zero-shot: held-out emoji, flags, MNIST family ---------------------------------------------------
    rows = []
    for label, e in enumerate(held):
        rel = iconify("fluent-emoji-flat", e.cp, f"images/zs-emoji/fluent-flat/{e.cp}.png", "plain")
        rows.append(Row(rel, label, e.name, "fluent"))
    p.sets["zs-emoji"] = {
        "role": "zeroshot",
        "classnames": "zs-emoji",
        "templates": EMOJI_TEMPLATES,
        "rows": rows,
        "class_list": [e.name for e in held],
    }

    table = src.emoji_table(root)
    flag_cps = {}
    for cp, e in table.items():
        if e.subcategory == "country-flag":
            for alias in [e.name, *e.aliases]:
                m = re.fullmatch(r"flag ([a-z]{2})", alias.replace("-", " "))
                if m:
                    flag_cps[m.group(1)] = cp
    flags = [f for f in src.flags(root) if f.code in flag_cps]
    if cfg.limit_emoji:
        flags = flags[: max(4, cfg.limit_emoji // 4)]
    rows = []
    for label, f in enumerate(flags):
        rel = job(f"images/zs-flags/flag-icons/{f.code}.png", "svg", f.svg, "plain")
        rows.append(Row(rel, label, f.name, "flag-icons"))
    p.sets["zs-flags"] = {
        "role": "zeroshot",
        "classnames": "zs-flags",
        "templates": FLAG_TEMPLATES,
        "rows": rows,
        "class_list": [f.name for f in flags],
    }

    # --- validation: the benchmark's classes in designs no other split uses ----------------------------------
    # The val splits drawn from the alignment corpus (val_splits.py) show designs the base was aligned on and the
    # retrieval captioner's texts describe, which flatters the caption anchors; these two designs are in no split,
    # as the test sets' designs are in none the base saw. Their icons carry no code points.
    unseen = {key: (iset, icons_by_name(iset, table))
              for key, iset in ((k, src.icon_set(k, root)) for k in UNSEEN_VAL_DESIGNS)}
    for name, classes in (("val-shift-unseen", train), ("val-zs-unseen", held)):
        rows = []
        for key, (iset, slugs) in unseen.items():
            for label, e in enumerate(classes):
                if e.cp in slugs:
                    rel = job(f"images/{name}/{key}/{e.cp}.png", "svg", iset.svg(slugs[e.cp], size), "plain")
                    rows.append(Row(rel, label, e.name, src.FAMILY[key]))
        if not rows:  # tiny test builds may hold no class either design has
            continue
        if classes is train:  # the finetuning question, over the classes it holds (a trained head reads it)
            p.sets[name] = masked_shift_set(name, rows, train_names, EMOJI_TEMPLATES, role="val-shift")
        else:  # zs-emoji's question on the held-out classes it holds, read through the text head
            own, class_list, _ = held_classes(rows, [e.name for e in held])
            p.sets[name] = {"role": "val-zeroshot", "classnames": name, "class_list": class_list,
                            "templates": EMOJI_TEMPLATES, "rows": own}

    mn_x, mn_y = src.mnist_test(root)
    fa_x, fa_y = src.fashion_test(Path(cfg.fashion_root))
    an_x, an_y, an_names = src.animal_mnist()
    for name, (x, y), classes, templates, fam in (
        ("zs-mnist", (mn_x, mn_y), [str(i) for i in range(10)], DIGIT_TEMPLATES, "mnist"),
        ("zs-fashion", (fa_x, fa_y), src.FASHION_CLASSES, SILHOUETTE_TEMPLATES, "fashion-mnist"),
        ("zs-animals", (an_x, an_y), an_names, SILHOUETTE_TEMPLATES, "animal-mnist"),
    ):
        rng = np.random.default_rng(seed)
        rows = []
        per = cfg.mnist_per_class if not cfg.limit_emoji else 3
        for label in range(len(classes)):
            idx = np.flatnonzero(np.asarray(y).reshape(-1) == label)
            for i in sorted(rng.choice(idx, size=min(per, len(idx)), replace=False).tolist()):
                img = np.asarray(x[i]).reshape(28, 28)
                if img.dtype != np.uint8:
                    img = (img * (255.0 / max(float(img.max()), 1.0))).astype(np.uint8)
                rel = job(f"images/{name}/{fam}/{label}_{i:05d}.png", "gray", img, "plain")
                rows.append(Row(rel, label, classes[label], fam))
        p.sets[name] = {
            "role": "zeroshot",
            "classnames": name,
            "templates": templates,
            "rows": rows,
            "class_list": classes,
        }

    # --- alignment corpus ("the web"): noto + twemoji renders of every base emoji, texts, digits, flags ----
    bench = {e.cp for e in train} | {e.cp for e in held}
    google, twitter = src.emoji_pngs("google-png", root), src.emoji_pngs("twitter-png", root)
    align: list[Row] = []
    base = sorted(cp for cp, e in table.items() if e.category not in ("Component", "Flags"))
    if cfg.limit_emoji:
        base = sorted(bench | set(base[: cfg.limit_emoji]))
    for cp in base:
        e = table[cp]
        rng = _rng(seed, "align", cp)
        renders = []
        for key, fam in (("noto", "noto"), ("twemoji", "twemoji")):
            if cp in sets[key].chars:
                n = 1 + (cfg.align_extra_per_class if cp in bench else 0)
                for k in range(n):
                    renders.append((iconify(key, cp, f"images/alignment/{key}/{cp}_{k}.png", "jitter"), fam))
        for pngs, key, fam in ((google, "google", "noto"), (twitter, "twitter", "twemoji")):
            if cp in pngs:
                renders.append((job(f"images/alignment/{key}/{cp}.png", "bytes", pngs[cp], "plain"), fam))
        texts = emoji_texts(e, rng, len(renders))
        for i, (rel, fam) in enumerate(renders):
            align.append(Row(rel, family=fam, classname=e.name, text=texts[i % len(texts)]))
    countries = {f.code: f.name for f in src.flags(root)}
    flag_sets = {k: src.icon_set(k, root) for k in ("circle-flags", "flagpack")} if cfg.align_flag_designs else {}
    flag_codes = {f.code for f in flags}
    for code, cp in sorted(flag_cps.items()):
        # Tiny builds keep only the tested countries; full builds align on every flag emoji.
        if code not in countries or (cfg.limit_emoji and code not in flag_codes):
            continue
        for pngs, key, fam in ((google, "google", "noto"), (twitter, "twitter", "twemoji")):
            if cp in pngs:
                rel = job(f"images/alignment/{key}-flags/{code}.png", "bytes", pngs[cp], "plain")
                tmpl = FLAG_TEMPLATES[int(_rng(seed, "flag", key, code).integers(len(FLAG_TEMPLATES)))]
                align.append(Row(rel, family=fam, classname=countries[code], text=tmpl.format(countries[code])))
        # The web shows a country's flag in many designs; two emoji flags per country left the base at ~16 % on
        # zs-flags (docs/DATA.md §4). Neither design is flag-icons (the test family).
        for key, iset in flag_sets.items():
            if code in iset.icons:
                svg = iset.svg(code, size)
                for k in range(1 + cfg.align_extra_per_class):
                    rel = job(f"images/alignment/{key}/{code}_{k}.png", "svg", svg, "jitter")
                    tmpl = FLAG_TEMPLATES[int(_rng(seed, "flag", key, code, k).integers(len(FLAG_TEMPLATES)))]
                    align.append(Row(rel, family=key, classname=countries[code], text=tmpl.format(countries[code])))
    fonts = sorted(
        str(f)
        for d in ("dejavu", "freefont")
        for f in Path("/usr/share/fonts/truetype", d).glob("*.ttf")
        if "Math" not in f.name
    )
    for font in fonts[: 4 if cfg.limit_emoji else None]:
        for d in range(10):
            rel = job(f"images/alignment/digits/{Path(font).stem}_{d}.png", "text", (font, str(d)), "jitter")
            rng = _rng(seed, "digit", font, d)
            text = [
                f"the number {d}",
                f"the digit {DIGIT_WORDS[d]}",
                f"{d}",
                f'the number: "{d}"',
                f"a printed {DIGIT_WORDS[d]}",
            ][int(rng.integers(5))]
            align.append(Row(rel, family="typeset-digits", classname=str(d), text=text))
    if cfg.align_glyphs:
        # The web also holds monochrome pictograms. Without them the base has only seen colour emoji and scores
        # ~16 % on black-and-white line art (docs/DATA.md §4), too low to show forgetting there. Symbola is a
        # design of its own (no test family draws on it); it covers all 300 finetuning classes.
        glyphs = src.font_codepoints(src.SYMBOLA_FONT)
        for cp in base:
            if "-" in cp or int(cp, 16) not in glyphs:
                continue
            e = table[cp]
            n = 1 + (cfg.align_extra_per_class if cp in bench else 0)
            texts = emoji_texts(e, _rng(seed, "glyph", cp), n)
            for k in range(n):
                rel = job(f"images/alignment/symbola/{cp}_{k}.png", "text", (str(src.SYMBOLA_FONT), chr(int(cp, 16))),
                          "jitter")
                align.append(Row(rel, family="symbola", classname=e.name, text=texts[k % len(texts)]))
    p.pairs["alignment"] = align

    # --- candidate pool ("CC3M"): openmoji + Tux Paint drawings ------------------------------------------
    pool: list[Row] = []
    for cp in base:
        if cp not in sets["openmoji"].chars:
            continue
        e = table[cp]
        rel = iconify("openmoji", cp, f"images/pool/openmoji/{cp}.png", "jitter")
        pool.append(Row(rel, family="openmoji", classname=e.name, text=emoji_texts(e, _rng(seed, "pool", cp), 1)[0]))
    # A web-sized pool (CC3M) shows flags; the alignment corpus holds the flag emoji of its two emoji families, so the
    # pool holds OpenMoji's (revision 4). Without them no retrieved anchor could name a country, whatever k.
    for code, cp in sorted(flag_cps.items()):
        if code not in countries or cp not in sets["openmoji"].chars or (cfg.limit_emoji and code not in flag_codes):
            continue
        rel = iconify("openmoji", cp, f"images/pool/openmoji-flags/{code}.png", "jitter")
        tmpl = FLAG_TEMPLATES[int(_rng(seed, "pool-flag", code).integers(len(FLAG_TEMPLATES)))]
        pool.append(Row(rel, family="openmoji", classname=countries[code], text=tmpl.format(countries[code])))
    drawings = [s for s in src.tux_stamps(tux) if not s.photo]
    for s in drawings[: 8 if cfg.limit_emoji else None]:
        rel = f"images/pool/tuxpaint/{stamp_slug(s.rel)}.png"
        data = (tux / s.rel).read_bytes()
        job(
            rel,
            "svg" if s.rel.endswith(".svg") else "bytes",
            data.decode("utf-8", "replace") if s.rel.endswith(".svg") else data,
            "plain",
        )
        pool.append(Row(rel, family="tuxpaint-drawing", text=clean_caption(s.caption)))
    # The web-like part (revision 7): OpenClipArt drawings with the titles their authors typed. Drawings that render
    # byte-identical to an earlier pool image (one file in several folders) are dropped after rendering.
    if cfg.pool_openclipart:
        for d in oca.drawings(Path(cfg.openclipart_root))[: 8 if cfg.limit_emoji else None]:
            rel = job(oca.image_rel(d.rel), "svg", d.svg, "plain")
            pool.append(Row(rel, family=OPENCLIPART_FAMILY, text=d.text))
    p.pairs["pool"] = pool
    p.sets["_classnames"] = {"train": train_names}
    return p


# ---------------------------------------------------------------------------------------------------------------
# execution


def _render_all(jobs: list[Job], out: Path, workers: int) -> dict[str, str]:
    if workers <= 1 or len(jobs) < 64:
        return dict(run_job(j, str(out)) for j in jobs)
    import multiprocessing as mp

    chunks = [(jobs[i : i + 64], str(out)) for i in range(0, len(jobs), 64)]
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(workers) as pool:
        results = pool.map(run_jobs_star, chunks, chunksize=1)
    return dict(kv for chunk in results for kv in chunk)


def _table(rows: list[Row], sha: dict[str, str], pairs: bool):
    import pyarrow as pa

    cols: dict[str, list] = {"path": [r.rel for r in rows]}
    if pairs:
        cols["text"] = [r.text for r in rows]
    else:
        cols["label"] = [r.label for r in rows]
        cols["classname"] = [r.classname for r in rows]
    cols["family"] = [r.family for r in rows]
    cols["sha256"] = [sha[r.rel] for r in rows]
    schema = {"label": pa.int32()}
    return pa.table({k: pa.array(v, type=schema.get(k)) for k, v in cols.items()})


def drop_repeated_drawings(rows: list[Row], sha: dict[str, str]) -> tuple[list[Row], int]:
    """``rows`` without the OpenClipArt drawings whose render repeats an earlier row's bytes, and how many went.
    Only OpenClipArt's: the rows of revision 6 stay as they were."""
    seen: set[str] = set()
    kept = []
    for r in rows:
        if r.family == OPENCLIPART_FAMILY and sha[r.rel] in seen:
            continue
        seen.add(sha[r.rel])
        kept.append(r)
    return kept, len(rows) - len(kept)


def is_built(out: Path, cfg: BuildConfig) -> bool:
    """True when ``out`` holds a complete build of ``cfg`` whose files match their recorded checksums."""
    manifest = out / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        meta = read_json(manifest)
    except ValueError:
        return False
    if meta.get("config") != cfg.identity():
        return False
    return all((out / rel).is_file() and sha256_file(out / rel) == h for rel, h in meta.get("files", {}).items())


def build(cfg: BuildConfig, force: bool = False) -> Path:
    """Build (or reuse) the benchmark; returns its root folder."""
    from arf.paths import data_dir

    out = Path(cfg.out) if cfg.out else data_dir() / "offline" / cfg.version
    if not force and is_built(out, cfg):
        log.info("offline benchmark at %s is up to date", out)
        return out
    t0 = time.time()
    p = plan(cfg)
    jobs = sorted(p.jobs.values(), key=lambda j: j.rel)
    log.info("rendering %d images into %s with %d workers", len(jobs), out, cfg.workers)
    (out / "manifest.json").unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    rendered = _render_all(jobs, out, cfg.workers)
    sha = {rel: h for rel, h in rendered.items() if h}
    failed = sorted(rel for rel, h in rendered.items() if not h)
    for spec in p.sets.values():
        if "rows" in spec:
            spec["rows"] = [r for r in spec["rows"] if r.rel in sha]
    for name in p.pairs:
        p.pairs[name] = [r for r in p.pairs[name] if r.rel in sha]
    p.pairs["pool"], repeats = drop_repeated_drawings(p.pairs["pool"], sha)
    t_render = time.time() - t0

    files: dict[str, str] = {}
    classnames = {"train": p.sets.pop("_classnames")["train"]}
    manifest_sets = {}
    for name, spec in p.sets.items():
        cn_key = spec["classnames"]
        if "class_list" in spec:
            classnames[cn_key] = spec["class_list"]
        rel = f"{name}.parquet"
        write_parquet(out / rel, _table(spec["rows"], sha, pairs=False))
        files[rel] = sha256_file(out / rel)
        manifest_sets[name] = {
            "role": spec["role"],
            "file": rel,
            "classnames": f"classnames/{cn_key}.json",
            "templates": spec["templates"],
            "families": sorted({r.family for r in spec["rows"]}),
            "reference": spec.get("reference"),
            "class_mask": spec.get("class_mask"),
            "count": len(spec["rows"]),
            "n_classes": len(classnames.get(cn_key, [])) or None,
            "sha256": files[rel],
        }
    for key, names in classnames.items():
        rel = f"classnames/{key}.json"
        write_json(out / rel, names)
        files[rel] = sha256_file(out / rel)
    for spec in manifest_sets.values():
        spec["n_classes"] = len(classnames[spec["classnames"].split("/")[1][:-5]])
    pairs = {}
    for name, rows in p.pairs.items():
        rel = f"{name}.parquet"
        write_parquet(out / rel, _table(rows, sha, pairs=True))
        files[rel] = sha256_file(out / rel)
        pairs[name] = {
            "file": rel,
            "count": len(rows),
            "images": len({r.rel for r in rows}),
            "families": sorted({r.family for r in rows}),
            "sha256": files[rel],
        }
    files.update(sha)
    root = Path(cfg.npm_root) if cfg.npm_root else None
    sources = {k: src.package_info(k, root) for k in sorted(src.NPM)}
    sources.update({k: src.debian_info(k) for k in sorted(src.DEBIAN)})
    meta = {
        "version": cfg.version,
        "image_size": cfg.image_size,
        "seed": cfg.seed,
        "config": cfg.identity(),
        "sets": manifest_sets,
        "pairs": pairs,
        "families": src.FAMILY,
        "sources": sources,
        "files": dict(sorted(files.items())),
        "failed_renders": failed,
        "pool_repeats_dropped": repeats,
        "build_seconds": {"render": round(t_render, 1), "total": round(time.time() - t0, 1)},
    }
    write_json(out / "manifest.json", meta)  # written last: its presence marks a complete build
    try:
        check_disjoint(out)
    except LeakError:
        (out / "manifest.json").unlink(missing_ok=True)
        raise
    log.info("built %d images, %d sets in %.1fs", len(jobs), len(manifest_sets), time.time() - t0)
    return out
