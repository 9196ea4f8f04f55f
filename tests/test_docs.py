"""The documentation says what the code does: every setting, check and command, the
CHANGELOG's versions, and a build with warnings as errors (when Sphinx is installed)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from django_ledgepay import conf

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_every_setting_is_in_the_settings_reference():
    names = {name for name in vars(conf.Settings) if name.startswith("LEDGEPAY_")}
    table = read(DOCS / "reference" / "settings.md")
    rows = set(re.findall(r"^\| `(LEDGEPAY_[A-Z_]+)` \|", table, flags=re.MULTILINE))

    assert {"LEDGEPAY_API_KEY", "LEDGEPAY_TASK_BACKEND"} <= names
    assert rows == names


def test_every_check_id_is_in_the_checks_reference():
    code = "".join(read(path) for path in (ROOT / "django_ledgepay").rglob("*.py"))
    ids = set(re.findall(r"django_ledgepay\.[EW]\d{3}", code))
    table = read(DOCS / "reference" / "checks.md")
    rows = set(re.findall(r"^\| `(django_ledgepay\.[EW]\d{3})` \|", table, flags=re.MULTILINE))

    assert "django_ledgepay.W008" in ids
    assert rows == ids


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.relative_to(DOCS).parts)


def test_every_python_block_on_every_page_compiles():
    blocks = 0
    for page in pages():
        fences = re.finditer(r"^( *)```python\n(.*?)^\1```", read(page), re.MULTILINE | re.DOTALL)
        for fence in fences:
            compile(textwrap.dedent(fence.group(2)), str(page), "exec")
            blocks += 1

    assert blocks > 10


def test_every_howto_page_has_a_title():
    for page in sorted((DOCS / "howto").glob("*.md")):
        assert read(page).startswith("# "), f"{page.name} does not start with a '# Title'"


def test_the_changelog_has_unreleased_then_released_versions_newest_first():
    changelog = read(ROOT / "CHANGELOG.md")
    headings = re.findall(r"^## (.+)$", changelog, flags=re.MULTILINE)
    released = [
        re.fullmatch(r"(\d+)\.(\d+)\.(\d+) \((\d{4}-\d{2}-\d{2})\)", h) for h in headings[1:]
    ]

    assert headings[0] == "Unreleased"
    assert all(released), headings
    versions = [tuple(int(part) for part in match.groups()[:3]) for match in released if match]
    dates = [match.group(4) for match in released if match]
    assert versions == sorted(versions, reverse=True)
    assert dates == sorted(dates, reverse=True)
    assert "0.1.0 (2026-11-30)" in headings


@pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ("sphinx", "myst_parser", "furo")),
    reason="the docs extra is not installed (pip install -e '.[docs]')",
)
def test_the_docs_build_offline_without_warnings(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d"]
        + [str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    tutorial = read(tmp_path / "html" / "tutorial" / "index.html")
    assert "def pay(request, pk):" in re.sub(r"<[^>]+>", "", tutorial)
    commands = re.sub(r"<[^>]+>", "", read(tmp_path / "html" / "reference" / "commands.html"))
    for path in (ROOT / "django_ledgepay" / "management" / "commands").glob("ledgepay_*.py"):
        assert path.stem in commands
