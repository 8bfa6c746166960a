"""Every shell command the docs show resolves when pasted after the README's first block.

The README's first block leaves the project's venv active, so a bare ``daqbridge``, ``python``
or ``pytest`` in docs/ means the venv's. This checks, for each command line of a ``bash`` or
``console`` block (``$``-prefixed lines only), that the program exists there or on PATH, that a
``daqbridge`` command line parses with the CLI's own parser (so a renamed subcommand or option in
the code fails here, not in a scientist's shell), and that a ``python FILE`` or ``python -m
MODULE`` names something that exists. Running each command is left to the tests that own them
(the migration walkthrough executes docs/migrating.md).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from daqbridge.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(bash|console|sh|shell)\n(.*?)^```", re.S | re.M)
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Words that join commands on one line; each part is checked as its own command.
SEPARATORS = {"&&", "||", "|", ";"}
PYTHONS = {"python", "python3"}


def _lines(text: str, lang: str) -> list[str]:
    """Command lines of one block: console output and comments dropped, continuations joined."""
    out: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending:
            if lang == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            if not line or line.startswith("#"):
                continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    return out


def _commands(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    for word in lexer:
        if word in SEPARATORS:
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


def _doc_commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for match in BLOCK.finditer(doc.read_text()):
            for line in _lines(match.group(2), match.group(1)):
                for words in _commands(line):
                    while words and ASSIGNMENT.match(words[0]):
                        words = words[1:]
                    if words:
                        found.append((f"{doc.relative_to(ROOT)}: {line}", words))
    return found


COMMANDS = _doc_commands()
VENV_BIN = Path(sys.executable).parent


def _program(word: str) -> str | None:
    """Where the shell of a reader who pasted the README's first block finds ``word``."""
    if "/" in word:
        return str(ROOT / word) if (ROOT / word).exists() else None
    if (VENV_BIN / word).exists():
        return str(VENV_BIN / word)
    return shutil.which(word)


def test_the_docs_show_commands():
    # Guards the parsing above: a change of fence style must not make every check vacuous.
    assert sum(words[0] == "daqbridge" for _, words in COMMANDS) >= 20


# Programs a doc shows for the machines around the lab, installed there, not by this project.
ELSEWHERE = {"redis-server", "apt-get", "sudo", "ssh", "cd", "export", "source", "."}


@pytest.mark.parametrize(("where", "words"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_doc_command_resolves(where, words):
    program = words[0]
    if program in ELSEWHERE or program in {"python3"} and words[1:3] == ["-m", "venv"]:
        return
    assert _program(program), f"{where}: {program!r} is neither in the venv nor on PATH"
    name = Path(program).name
    if name == "daqbridge":
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            try:
                build_parser().parse_args(words[1:])
            except SystemExit as exit:
                assert exit.code == 0, f"{where}: the CLI refuses it: {stderr.getvalue()}"
    elif name in PYTHONS and len(words) > 1:
        if words[1] == "-m":
            module = words[2]
            assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
        elif not words[1].startswith("-"):
            assert (ROOT / words[1]).exists() or os.path.exists(words[1]), (
                f"{where}: no file {words[1]}"
            )
