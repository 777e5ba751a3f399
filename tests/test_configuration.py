"""docs/configuration.md against server/settings.py: every setting documented, with its default."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from server.settings import Settings

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
ROW = re.compile(r"^\| `(HUB_[A-Z0-9_]+)` \| (`[^`]*`|\(empty\)) \| (.+) \|$")


def documented() -> dict[str, str]:
    """Each documented variable -> its default as the page writes it."""
    rows: dict[str, str] = {}
    for line in PAGE.read_text().splitlines():
        if match := ROW.match(line):
            name, default, meaning = match.groups()
            assert name not in rows, f"{name} is documented twice"
            assert meaning.strip(), f"{name} has no meaning"
            rows[name] = "" if default == "(empty)" else default.strip("`")
    return rows


def test_every_setting_is_documented_once_and_nothing_else_is() -> None:
    wanted = {f"HUB_{field.name.upper()}" for field in dataclasses.fields(Settings)}
    rows = documented()
    assert sorted(wanted - rows.keys()) == [], "settings missing from docs/configuration.md"
    assert sorted(rows.keys() - wanted) == [], "docs/configuration.md names no such setting"


@pytest.mark.parametrize("name", sorted(documented()))
def test_each_documented_default_is_the_hubs(name: str) -> None:
    """The default as written, read as the variable would be, is the field's default."""
    field = name.removeprefix("HUB_").lower()
    written = Settings.from_environ({name: documented()[name]})
    assert getattr(written, field) == getattr(Settings(), field)
