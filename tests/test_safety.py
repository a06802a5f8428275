"""Untrusted files: crafted pickles are refused, plain state dicts load, and no code in src/ can regress to an
unsafe loader (the AST scan at the bottom fails the build if someone writes ``torch.load(p)``)."""

from __future__ import annotations

import ast
import collections
import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from arf.errors import ArfError, InputFileError
from arf.safety import UnsafeFileError, load_state_dict, safe_torch_load

REPO = Path(__file__).resolve().parents[1]


class _RunsCode:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('/tmp/arf-pwned-exec').touch()",))


def _evil_files(tmp: Path, marker: Path) -> dict[str, Path]:
    files = {}
    files["torch zip with os.system"] = tmp / "zip.pt"
    torch.save({"weight": torch.zeros(2), "x": _RunsCode(marker)}, files["torch zip with os.system"])
    files["legacy torch format"] = tmp / "legacy.pt"
    torch.save({"x": _RunsCode(marker)}, files["legacy torch format"], _use_new_zipfile_serialization=False)
    for proto in (2, 4, 5):
        files[f"raw pickle protocol {proto}"] = tmp / f"raw{proto}.pkl"
        files[f"raw pickle protocol {proto}"].write_bytes(pickle.dumps({"x": _RunsCode(marker)}, protocol=proto))
    files["exec builtin"] = tmp / "exec.bin"
    torch.save({"x": _Exec()}, files["exec builtin"])
    files["numpy object array"] = tmp / "np.pt"
    import numpy as np

    torch.save({"a": np.array([_RunsCode(marker)], dtype=object)}, files["numpy object array"])
    return files


# The crafted files use pickle protocols 4/5 on purpose; torch warns before refusing them.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_crafted_pickles_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    files = _evil_files(tmp_path, marker)
    for kind, path in files.items():
        with pytest.raises(UnsafeFileError) as e:
            safe_torch_load(path)
        msg = str(e.value)
        assert msg.startswith(f"refusing to load {path}:"), (kind, msg)
        assert "\n" not in msg, "one line for the CLI"
        assert isinstance(e.value, ArfError)
        with pytest.raises(UnsafeFileError):
            load_state_dict(path)
    assert not marker.exists() and not Path("/tmp/arf-pwned-exec").exists(), "no payload ran"
    # The message names what the file tried to import, so the user knows it is not a mere corruption.
    with pytest.raises(UnsafeFileError, match=r"imports (posix|os|nt)\.system"):
        safe_torch_load(files["torch zip with os.system"])


def test_plain_state_dicts_load(tmp_path: Path) -> None:
    sd = {"visual.proj": torch.randn(4, 3), "logit_scale": torch.tensor(4.6), "ids": torch.arange(5)}
    torch.save(sd, tmp_path / "sd.pt")
    got = safe_torch_load(tmp_path / "sd.pt")
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    torch.save(collections.OrderedDict(sd), tmp_path / "od.pt")
    assert list(load_state_dict(tmp_path / "od.pt")) == list(sd)
    # open_clip/timm training checkpoints wrap the weights with plain metadata.
    torch.save({"epoch": 3, "name": "x", "state_dict": sd, "lr": [1e-5]}, tmp_path / "wrapped.pt")
    assert torch.equal(load_state_dict(tmp_path / "wrapped.pt")["visual.proj"], sd["visual.proj"])
    from safetensors.torch import save_file

    save_file(sd, tmp_path / "sd.safetensors")
    assert torch.equal(load_state_dict(tmp_path / "sd.safetensors")["ids"], sd["ids"])


def test_unreadable_files_are_input_errors(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(100)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    cases = {
        "truncated.pt": data[: len(data) // 2],
        "empty.pt": b"",
        "text.pt": b"hello world",
        "html.pt": b"<html>404</html>",
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises((InputFileError, UnsafeFileError)) as e:
            safe_torch_load(tmp_path / name)
        assert str(tmp_path / name) in str(e.value)
    with pytest.raises(InputFileError, match="file not found"):
        safe_torch_load(tmp_path / "missing.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(InputFileError, match="not a valid safetensors file"):
        load_state_dict(tmp_path / "bad.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(InputFileError, match="expected a state dict of tensors, got list"):
        load_state_dict(tmp_path / "list.pt")


# ---------------------------------------------------------------------------------------------- static scan

UNSAFE_CALLS = {
    "pickle.load", "pickle.loads", "dill.load", "dill.loads", "joblib.load", "marshal.loads", "marshal.load",
    "yaml.unsafe_load", "yaml.full_load", "pandas.read_pickle", "torch.jit.load", "cloudpickle.load",
    "cloudpickle.loads", "shelve.open",
}


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def _kw_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Every call in ``source`` that could execute code from a data file, as ``file:line: what``."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> module path ("np" -> "numpy", "load" -> "torch.load")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases) or ""
        name = name.replace("np.", "numpy.", 1) if name.startswith("np.") else name
        why = None
        if name == "torch.load" and not _kw_true(node, "weights_only"):
            why = "torch.load without weights_only=True"
        elif name in UNSAFE_CALLS:
            why = f"{name} can run code from the file"
        elif name == "yaml.load" and not any(
            k.arg == "Loader" and (_dotted(k.value, aliases) or "").endswith(("SafeLoader", "CSafeLoader"))
            for k in node.keywords
        ):
            why = "yaml.load without Loader=SafeLoader"
        elif name in ("numpy.load", "numpy.lib.format.read_array") and _kw_true(node, "allow_pickle"):
            why = "numpy.load with allow_pickle=True"
        elif name in ("eval", "exec", "builtins.eval", "builtins.exec"):
            why = f"{name}() on a string"
        elif _kw_true(node, "trust_remote_code"):
            why = "trust_remote_code=True runs code from the model repository"
        if why:
            found.append(f"{filename}:{node.lineno}: {why}")
    return found


def test_scanner_catches_what_it_should() -> None:
    bad = """
import torch, pickle, yaml
import numpy as np
from torch import load as tl
from transformers import AutoModel
torch.load(p)
torch.load(p, weights_only=False)
tl(p)
pickle.loads(b)
yaml.load(s)
np.load(p, allow_pickle=True)
eval(s)
AutoModel.from_pretrained(x, trust_remote_code=True)
"""
    hits = unsafe_calls(bad)
    assert [int(h.split(":")[1]) for h in hits] == list(range(6, 14)), hits  # every line from torch.load(p) on
    good = """
import torch, yaml, pickle
import numpy as np
torch.load(p, map_location="cpu", weights_only=True)
yaml.load(s, Loader=yaml.SafeLoader)
yaml.safe_load(s)
np.load(p)
model.eval()
class R(pickle.Unpickler):
    pass
R(f).load()
"""
    assert unsafe_calls(good) == []


def test_no_unsafe_loaders_in_the_code() -> None:
    roots = [REPO / d for d in ("src", "scripts", "benchmarks") if (REPO / d).is_dir()]
    files = [p for root in roots for p in root.rglob("*.py")]
    assert len(files) > 10, "the scan found the package"
    problems = [hit for p in files for hit in unsafe_calls(p.read_text(), str(p.relative_to(REPO)))]
    assert problems == [], "unsafe loading of data files:\n" + "\n".join(problems)


def test_restricted_unpickler_pattern_refuses_globals() -> None:
    # The one place that unpickles third-party data (Animal-MNIST) uses an allow-list Unpickler; check the pattern.
    from arf.data.offline import sources

    unpickler = next(v for v in vars(sources).values() if isinstance(v, type) and issubclass(v, pickle.Unpickler))
    payload = pickle.dumps(_RunsCode(Path("/tmp/arf-pwned-unpickler")))
    with pytest.raises(pickle.UnpicklingError):
        unpickler(io.BytesIO(payload)).load()
    assert not Path("/tmp/arf-pwned-unpickler").exists()
