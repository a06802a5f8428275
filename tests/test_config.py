"""Property-based tests of the config parser (``arf.config``): dataclass <-> YAML <-> CLI overrides.

Example counts per property are the ``max_examples`` below; docs/RELIABILITY.md records their sum.
"""

from __future__ import annotations

import json
import math
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from arf.config import ConfigError, check, config_hash, from_dict, load_config, parse_overrides, save_config
from arf.errors import ArfError

Method = Literal["zeroshot", "lp", "ft", "lpft", "flyp", "arf"]
METHODS = ("zeroshot", "lp", "ft", "lpft", "flyp", "arf")


@dataclass
class Optim:
    lr: float = 1e-5
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)


@dataclass
class Cfg:
    name: str = "run"
    seed: int = 0
    method: Method = "arf"
    amp: bool = False
    lam_cap: float = 1.0
    prompt: str | None = None
    suites: list[str] = field(default_factory=lambda: ["offline"])
    out: Path = Path("runs")
    optim: Optim = field(default_factory=Optim)

    def validate(self) -> None:
        check(self.lam_cap >= 0, "lam_cap", f"{self.lam_cap} must be >= 0")
        check(self.optim.lr > 0, "optim.lr", f"{self.optim.lr} must be > 0")


@dataclass
class Plain:  # the same shape without validate(), so properties can use any number
    name: str = "run"
    seed: int = 0
    method: Method = "arf"
    amp: bool = False
    lam_cap: float = 1.0
    prompt: str | None = None
    suites: list[str] = field(default_factory=lambda: ["offline"])
    out: Path = Path("runs")
    optim: Optim = field(default_factory=Optim)


N = 300  # examples per property


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    # save_config fsyncs (atomic write); hundreds of examples would spend minutes waiting for the disk.
    # Durability is tested in test_io.py; here only the parsing matters.
    monkeypatch.setattr("os.fsync", lambda fd: None)
SETTINGS = settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])

# Any text YAML can carry: no surrogates, no NUL-like control characters that YAML forbids in documents.
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
# List items typed as [..] on the command line go through YAML, which refuses control characters in a document.
printable = st.text(st.characters(whitelist_categories=("L", "N", "P", "S", "Zs")), max_size=20)
numbers = st.floats(allow_nan=False, width=64)
segments = st.text(string.ascii_letters + string.digits + "_-.", min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..")
)
paths = st.lists(segments, min_size=1, max_size=4).map(lambda parts: Path(*parts))
# A str | None field cannot carry text that YAML reads as null ("null", "~") through a CLI override.
prompts = st.none() | text.filter(lambda s: s == "" or yaml.safe_load(s) is not None if _yaml_ok(s) else True)
optims = st.builds(Optim, lr=numbers, weight_decay=numbers, betas=st.tuples(numbers, numbers))
plains = st.builds(
    Plain, name=text, seed=st.integers(-(2**63), 2**63), method=st.sampled_from(METHODS), amp=st.booleans(),
    lam_cap=numbers, prompt=prompts, suites=st.lists(printable, max_size=4), out=paths, optim=optims,
)


def _yaml_ok(s: str) -> bool:
    try:
        yaml.safe_load(s)
        return True
    except yaml.YAMLError:
        return False


def _cli_text(value: Any) -> str:
    """How a user would type ``value`` after ``key=``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        # JSON is YAML flow syntax: quoted strings stay strings.
        return json.dumps(list(value), ensure_ascii=False)
    return str(value)


def to_overrides(cfg: Plain) -> list[str]:
    out = []
    for k, v in vars(cfg).items():
        if isinstance(v, Optim):
            out += [f"optim.{kk}={_cli_text(vv)}" for kk, vv in vars(v).items()]
        else:
            out.append(f"{k}={_cli_text(v)}")
    return out


# ---------------------------------------------------------------------------------------------- round trips


@SETTINGS
@given(cfg=plains)
def test_yaml_round_trip(cfg: Plain, tmp_path_factory: pytest.TempPathFactory) -> None:
    p = tmp_path_factory.mktemp("cfg") / "config.yaml"
    save_config(cfg, p)
    assert load_config(Plain, p) == cfg


@SETTINGS
@given(cfg=plains)
def test_override_round_trip(cfg: Plain) -> None:
    assert load_config(Plain, None, to_overrides(cfg)) == cfg


@SETTINGS
@given(base=plains, top=plains, keys=st.sets(st.sampled_from(["name", "seed", "method", "amp", "prompt", "out",
                                                               "optim.lr", "optim.betas"])))
def test_overrides_win_over_yaml_field_by_field(base: Plain, top: Plain, keys: set[str],
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    p = tmp_path_factory.mktemp("cfg") / "c.yaml"
    save_config(base, p)
    chosen = [o for o in to_overrides(top) if o.split("=", 1)[0] in keys]
    got = load_config(Plain, p, chosen)
    for k in ["name", "seed", "method", "amp", "prompt", "out"]:
        assert getattr(got, k) == getattr(top if k in keys else base, k)
    assert got.optim.lr == (top if "optim.lr" in keys else base).optim.lr
    assert got.optim.betas == (top if "optim.betas" in keys else base).optim.betas
    assert got.optim.weight_decay == base.optim.weight_decay  # a sibling of an overridden nested field survives


@SETTINGS
@given(s=text)
def test_str_field_takes_override_text_verbatim(s: str) -> None:
    # "Question: what is it?" (a YAML mapping), "1.10", "yes", "2024-01-01", "[x" all stay exactly as typed.
    assert load_config(Plain, None, [f"name={s}"]).name == s
    if s:
        assert load_config(Plain, None, [f"prompt={s}"]).prompt == (None if _yaml_ok(s) and yaml.safe_load(s) is None
                                                                    else s)


# ---------------------------------------------------------------------------------------------- errors name the field

WRONG = {
    "seed": st.sampled_from(["abc", "1.5", "[1, 2]", "{a: 1}", "true", "null"]),
    "lam_cap": st.sampled_from(["abc", "[1]", "{a: 1}", "true", "null", "1,2"]),
    "amp": st.sampled_from(["maybe", "2", "-1", "[true]", "null", "tru", "Fals"]),
    "optim.lr": st.sampled_from(["fast", "[1e-5]", "false", "null"]),
    "optim.betas": st.sampled_from(["0.9", "[0.9]", "[0.9, 0.98, 0.99]", "[a, b]", "{b: 1}"]),
}


@settings(max_examples=N, deadline=None)
@given(data=st.data())
def test_wrong_type_names_the_field(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(WRONG)))
    bad = data.draw(WRONG[key])
    with pytest.raises(ConfigError) as e:
        load_config(Plain, None, [f"{key}={bad}"])
    assert str(e.value).startswith(key), str(e.value)


@settings(max_examples=N, deadline=None)
@given(value=text.filter(lambda s: s not in METHODS))
def test_literal_lists_allowed_values(value: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(Plain, None, [f"method={value}"])
    msg = str(e.value)
    assert msg.startswith("method:") and "choose from" in msg
    assert all(m in msg for m in METHODS)


@settings(max_examples=N, deadline=None)
@given(key=st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True), nested=st.booleans())
def test_unknown_key_names_key_and_lists_choices(key: str, nested: bool) -> None:
    fields = ["lr", "weight_decay", "betas"] if nested else list(vars(Plain()))
    assume(key not in fields)
    full = f"optim.{key}" if nested else key
    with pytest.raises(ConfigError) as e:
        load_config(Plain, None, [f"{full}=1"])
    msg = str(e.value)
    assert f"unknown config field {full};" in msg
    assert all((f"optim.{f}" if nested else f) in msg for f in fields)


def test_yaml_file_errors_name_the_file_and_field(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: [1]\n")
    with pytest.raises(ConfigError, match=r"^optim\.lr: expected a number"):
        load_config(Plain, p)
    p.write_text("seed: 1\n  bad indent: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(Plain, p)
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(Plain, p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Plain, tmp_path / "missing.yaml")
    p.write_text("out: [a, b]\n")  # from YAML a list is not a path (from the CLI any text is)
    with pytest.raises(ConfigError, match=r"^out: expected a path"):
        load_config(Plain, p)
    p.write_text("1: a\nb: 2\n")  # non-text keys must not crash the unknown-key message
    with pytest.raises(ConfigError, match="unknown config field"):
        load_config(Plain, p)


def test_validate_runs_after_parsing() -> None:
    with pytest.raises(ConfigError, match=r"^lam_cap: -1.0 must be >= 0"):
        load_config(Cfg, None, ["lam_cap=-1"])
    with pytest.raises(ConfigError, match=r"^optim\.lr: 0.0 must be > 0"):
        load_config(Cfg, None, ["optim.lr=0"])
    assert load_config(Cfg, None, ["optim.lr=1e-3"]).optim.lr == 1e-3


def test_missing_required_field_is_a_config_error() -> None:
    @dataclass
    class Needs:
        data: str

    with pytest.raises(ConfigError, match="missing config field data"):
        from_dict(Needs, {})


# ---------------------------------------------------------------------------------------------- booleans

FALSE_WORDS = ["false", "no", "off", "0"]
TRUE_WORDS = ["true", "yes", "on", "1"]


def _cases(word: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda ups: "".join(c.upper() if u else c for c, u in zip(word, ups, strict=True))
    )


@settings(max_examples=N, deadline=None)
@given(word=st.sampled_from(FALSE_WORDS).flatmap(_cases), quoted=st.booleans(), how=st.sampled_from(["cli", "yaml"]))
def test_false_is_never_true(word: str, quoted: bool, how: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    value = f'"{word}"' if quoted else word
    if how == "cli":
        cfg = load_config(Plain, None, [f"amp={value}"])
    else:
        p = tmp_path_factory.mktemp("b") / "c.yaml"
        p.write_text(f"amp: {value}\n")
        cfg = load_config(Plain, p)
    assert cfg.amp is False


@settings(max_examples=N // 3, deadline=None)
@given(word=st.sampled_from(TRUE_WORDS).flatmap(_cases))
def test_true_words(word: str) -> None:
    assert load_config(Plain, None, [f"amp={word}"]).amp is True


@settings(max_examples=N, deadline=None)
@given(value=text)
def test_bool_never_guesses(value: str) -> None:
    # Anything that is not a true/false word is an error, never bool(value) (where "False" would be True).
    words = {w for w in FALSE_WORDS + TRUE_WORDS}
    parsed = yaml.safe_load(value) if _yaml_ok(value) and value else value
    assume(value.strip().lower() not in words and not isinstance(parsed, bool) and parsed not in (0, 1))
    with pytest.raises(ConfigError, match=r"^amp: expected true or false"):
        load_config(Plain, None, [f"amp={value}"])


# ---------------------------------------------------------------------------------------------- fuzzing


@settings(max_examples=N * 2, deadline=None)
@given(items=st.lists(st.text(max_size=30) | st.from_regex(r"[a-z.]{0,8}=.{0,20}", fullmatch=True), max_size=6))
def test_parse_overrides_only_raises_config_error(items: list[str]) -> None:
    try:
        out = parse_overrides(items)
    except ConfigError:
        return
    assert isinstance(out, dict)


@settings(max_examples=N * 2, deadline=None)
@given(items=st.lists(
    st.from_regex(r"(name|seed|method|amp|lam_cap|prompt|suites|out|optim|optim\.lr|optim\.betas|x)=.{0,20}",
                  fullmatch=True) | st.text(max_size=20), max_size=5))
def test_load_config_only_raises_config_error(items: list[str]) -> None:
    try:
        cfg = load_config(Cfg, None, items)
    except ConfigError:
        return
    assert isinstance(cfg, Cfg) and isinstance(cfg.optim, Optim) and isinstance(cfg.out, Path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=10,
)


@settings(max_examples=N * 2, deadline=None)
@given(data=st.dictionaries(st.sampled_from(["name", "seed", "method", "amp", "lam_cap", "prompt", "suites", "out",
                                             "optim", "zzz"]) | st.integers(), json_values, max_size=5))
def test_from_dict_only_raises_config_error(data: dict) -> None:
    try:
        cfg = from_dict(Plain, data)
    except ConfigError:
        return
    for k, v in data.items():
        if k in ("seed", "amp") and v is not None:
            assert type(getattr(cfg, k)) is {"seed": int, "amp": bool}[k]


# ---------------------------------------------------------------------------------------------- odds and ends


def test_parse_overrides_shapes_and_conflicts() -> None:
    assert parse_overrides(["a.b.c=1", "a.d=x", "e=", "f=[1, 2]", "g=k=v"]) == {
        "a": {"b": {"c": 1}, "d": "x"}, "e": "", "f": [1, 2], "g": "k=v"}
    assert parse_overrides(["p=Question: what is it?"]) == {"p": "Question: what is it?"}
    for bad in (["novalue"], ["a=1", "a.b=2"], ["a..b=1"], ["=1"], [".a=1"]):
        with pytest.raises(ConfigError):
            parse_overrides(bad)


def test_literal_and_bool_are_not_confused() -> None:
    @dataclass
    class Bits:
        bits: Literal[0, 1] = 0
        scale: Literal[0.5, 1.0] = 1.0

    with pytest.raises(ConfigError, match="choose from 0, 1"):
        from_dict(Bits, {"bits": True})
    assert from_dict(Bits, {"scale": 1}).scale == 1.0


def test_numbers_from_text() -> None:
    cfg = load_config(Plain, None, ["seed=1e3", "lam_cap=1e-5", "optim.lr=.5"])
    assert cfg.seed == 1000 and isinstance(cfg.seed, int) and cfg.lam_cap == 1e-5 and cfg.optim.lr == 0.5
    assert math.isinf(load_config(Plain, None, ["lam_cap=inf"]).lam_cap)


def test_config_hash_is_stable_and_sensitive() -> None:
    a = Plain()
    assert config_hash(a) == config_hash(Plain()) and len(config_hash(a)) == 12
    assert config_hash(a) != config_hash(replace(a, seed=1))
    assert config_hash(a, "x") != config_hash(a, "y")


def test_check_and_errors_are_arf_errors() -> None:
    check(True, "k", "fine")
    with pytest.raises(ConfigError, match=r"^k: must be > 0$") as e:
        check(False, "k", "must be > 0")
    assert isinstance(e.value, ArfError) and isinstance(e.value, ValueError)
