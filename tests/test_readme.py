"""The README is a five-minute read: at most 150 lines, the two commands first, and every relative
link (there and in docs/) points at a file of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
#: ``[text](target)``, the target up to a closing parenthesis, an optional ``#anchor`` dropped.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
COMMANDS = ("bash scripts/run_full.sh", "bash scripts/test.sh")


def relative_links(page: Path) -> list[str]:
    targets = [match.group(1) for match in LINK.finditer(page.read_text(encoding="utf-8"))]
    return [target for target in targets if not re.match(r"[a-z]+:", target) and not target.startswith("#")]


def test_the_readme_is_at_most_150_lines() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 150


def test_the_two_commands_come_first() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    first_block = lines[lines.index("```bash") + 1 : lines.index("```bash") + 3]
    assert [line.split("#")[0].strip() for line in first_block] == list(COMMANDS)
    assert lines.index("```bash") < 5  # right under the title
    for command in COMMANDS:
        assert (PROJECT_ROOT / command.split()[1]).is_file()


@pytest.mark.parametrize("page", [README, *sorted((PROJECT_ROOT / "docs").rglob("*.md"))], ids=lambda page: page.name)
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists() or PROJECT_ROOT.resolve() not in path.parents:
            broken.append(target)
    assert broken == []
