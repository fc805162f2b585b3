"""README is a user's guide that matches the code: its imports import, its CLI flags exist."""

from __future__ import annotations

import re
from pathlib import Path

from blockprune.cli import build_parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def option_strings() -> set[str]:
    parser = build_parser()
    found = set()
    for action in parser._subparsers._group_actions:  # the sub-commands
        for sub in action.choices.values():
            for option in sub._actions:
                found.update(option.option_strings)
    return found


def test_every_flag_the_cli_section_names_exists():
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]", section("The CLI")))
    assert named, "the CLI section names no flag"
    missing = sorted(named - option_strings() - {"--nproc_per_node"})
    assert not missing, f"README names flags the CLI does not have: {missing}"


def test_every_documented_import_imports():
    lines = [line.split("#")[0].strip() for line in README.splitlines()]
    imports = [line for line in lines if re.match(r"from blockprune[\w.]* import ", line)]
    assert len(imports) >= 3
    for line in imports:
        exec(line, {})  # an ImportError names the line
