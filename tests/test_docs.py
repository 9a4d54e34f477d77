"""The README and CLI agree: every flag documented, the two fresh-machine commands, CI = README."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ecgembed.cli import add_run_arguments, build_parser

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def _run_flags() -> list[argparse.Action]:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def test_every_run_flag_has_help_and_is_in_the_readme():
    for action in _run_flags():
        flag = max(action.option_strings, key=len)
        assert action.help and len(action.help) > 10, flag
        assert f"`{flag}" in README, f"{flag} is not documented in README.md"


def test_every_subcommand_has_help_with_an_example():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert parser.description and "Example: ecgembed " + name in parser.description


def test_readme_has_exactly_two_fresh_machine_commands_and_ci_runs_the_test_one():
    block = README.split("## On a fresh machine", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^exec bash scripts/test\.sh", ci, re.M)


def test_docs_links_resolve():
    for doc in [REPO / "README.md", *(REPO / "docs").rglob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+\.md)", doc.read_text()):
            assert (doc.parent / target).is_file(), f"{doc.name} links to missing {target}"
