"""The ``arf`` command shell: ``--help`` lists every stage's subcommands; an ArfError is one line and exit 2."""

from __future__ import annotations

import argparse
import importlib
import logging
import subprocess
import sys

import pytest

import arf.cli
from arf.errors import ConfigError


def _registered_subcommands() -> dict[str, list[str]]:
    """Subcommand names each module in COMMAND_MODULES registers, asked of the module itself."""
    out = {}
    for name in arf.cli.COMMAND_MODULES:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(f"arf.cli.{name}").register(sub)
        out[name] = sorted(sub.choices)
    return out


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        arf.cli.main(["--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: arf")
    commands = [c for cmds in _registered_subcommands().values() for c in cmds]
    assert len(commands) == len(set(commands)), "two stages register the same subcommand"
    for cmd in commands:
        assert f"    {cmd} " in help_text or f"    {cmd}\n" in help_text, f"{cmd} missing from arf --help"


def test_each_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for cmds in _registered_subcommands().values():
        for cmd in cmds:
            with pytest.raises(SystemExit) as e:
                arf.cli.main([cmd, "--help"])
            assert e.value.code == 0, cmd
            text = capsys.readouterr().out
            assert text.startswith(f"usage: arf {cmd}") and "TODO" not in text, cmd


def test_help_is_fast_and_works_as_a_program() -> None:
    # Handlers import torch lazily: `arf --help` must not import it.
    code = "import sys, arf.cli; sys.argv = ['arf', '--help']\ntry:\n    arf.cli.main()\nexcept SystemExit as e:\n" \
           "    assert e.code == 0\nassert 'torch' not in sys.modules, 'arf --help imported torch'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: arf" in out.stdout


def test_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        arf.cli.main(["no-such-command"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def _add_commands(monkeypatch: pytest.MonkeyPatch, **funcs: object) -> None:
    """Make ``arf.cli.main`` parse with extra subcommands, each running its function (args) -> exit code."""
    real_build = arf.cli.build_parser

    def build() -> argparse.ArgumentParser:
        parser = real_build()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, func in funcs.items():
            sub.add_parser(name.replace("_", "-")).set_defaults(func=func)
        return parser

    monkeypatch.setattr(arf.cli, "build_parser", build)


def test_arf_error_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _add_commands(monkeypatch,
                  fail_config=lambda args: (_ for _ in ()).throw(ConfigError("train.lr: -1.0 must be > 0")),
                  fail_bug=lambda args: 1 / 0)
    assert arf.cli.main(["fail-config"]) == 2
    err = capsys.readouterr().err
    assert err == "arf: error: train.lr: -1.0 must be > 0\n", "one line, no traceback"
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        arf.cli.main(["fail-bug"])


def test_real_config_error_from_a_stage(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    # A real stage, a real invalid value: `arf train` with an unknown method names the field and the choices,
    # before any work starts (nothing is written).
    rc = arf.cli.main(["train", "--method", "nonsense", "--out-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("arf: error:"), err
    assert "method" in err[0] and "nonsense" in err[0] and "flyp" in err[0] and "zeroshot" in err[0]
    assert not (tmp_path / "runs").exists()


def test_third_party_info_logs_are_quiet_unless_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    # faiss's loader says at INFO that its AVX2 build "could not load" (ModuleNotFoundError) before it falls back
    # to the generic build: not an error, so hidden; with -v it shows, like every debug line.
    _add_commands(monkeypatch, noop=lambda args: 0)
    monkeypatch.setattr(logging.getLogger("faiss"), "level", logging.NOTSET)  # restored after the test
    assert arf.cli.main(["noop"]) == 0
    assert not logging.getLogger("faiss.loader").isEnabledFor(logging.INFO)
    assert arf.cli.main(["-v", "noop"]) == 0
    assert logging.getLogger("faiss.loader").isEnabledFor(logging.INFO)
