"""Every `arf` command in the README's and docs' ```bash blocks parses with the real CLI parser.

A copied command that argparse rejects (a flag that was renamed, two values after an `append` flag such as
`--set a=1 b=2`) is the first thing a user meets; argparse's own error would only show when they run it.
Only parsing happens here: no handler runs, nothing is read or written.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from arf.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# `./run X` runs `arf X` in the project's venv (./run test is pytest, not arf); so do `torchrun … -m arf.cli X` and
# `python -m arf.cli X`.
ENTRIES = ("arf", "./run")
SEPARATORS = {"&&", "||", ";", "|"}
# `<captions.parquet from arf caption>`: a placeholder the reader fills in, one argument
PLACEHOLDER = re.compile(r"<[^<>]*>")


def bash_commands(path: Path) -> list[tuple[int, str]]:
    """(line number, command) of every ```bash block line, continuation lines joined."""
    out: list[tuple[int, str]] = []
    inside, pending, start = False, "", 0
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if not inside:
            continue
        if not pending:
            start = i
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            out.append((start, pending.strip()))
            pending = ""
    return out


def arf_argv(words: list[str]) -> list[str] | None:
    """The arguments after `arf` of one simple command, or None if it does not run arf."""
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):  # VAR=value prefixes
        words = words[1:]
    if words[:1] and words[0] in ENTRIES:
        return words[1:]
    if "-m" in words and words[words.index("-m") + 1:][:1] == ["arf.cli"]:  # torchrun / python -m arf.cli
        return words[words.index("-m") + 2:]
    return None


def arf_argvs(path: Path) -> list[tuple[int, list[str]]]:
    found = []
    for line, command in bash_commands(path):
        lexer = shlex.shlex(PLACEHOLDER.sub("PLACEHOLDER", command), posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        simple: list[list[str]] = [[]]
        for word in lexer:
            if word in SEPARATORS:
                simple.append([])
            else:
                simple[-1].append(word)
        for words in simple:
            argv = arf_argv(words)
            if argv is not None and argv[:1] != ["test"]:  # ./run test: pytest with the suite's own arguments
                found.append((line, argv))
    return found


CASES = [(p, line, argv) for p in DOCS for line, argv in arf_argvs(p)]


def test_the_readme_shows_the_paper_setting_commands() -> None:
    commands = [argv[0] for p, _, argv in CASES if p.name == "README.md"]
    # the two set-up commands' `demo` and the paper block's stages: a parser change that hid them would not do
    for name in ("demo", "pool", "caption", "retrieve", "train", "wise", "report"):
        assert name in commands, f"README has no `arf {name}` command in a bash block"


@pytest.mark.parametrize(("path", "line", "argv"), CASES,
                         ids=[f"{p.name}:{line}" for p, line, _ in CASES])
def test_documented_command_parses(path: Path, line: int, argv: list[str], capsys) -> None:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        err = capsys.readouterr().err.strip().splitlines()[-1:]
        pytest.fail(f"{path.name}:{line}: `arf {' '.join(argv)}` does not parse: {err} (exit {e.code})")
    config = getattr(args, "config", None)
    if config and not Path(config).is_absolute():
        assert (REPO / config).is_file(), f"{path.name}:{line}: --config {config} does not exist"
