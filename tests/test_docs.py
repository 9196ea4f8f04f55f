"""The documentation says what the code does: every setting, check and command, the
CHANGELOG's versions, the README's set-up on a fresh project, and a build with warnings as
errors (when Sphinx is installed; ``LEDGEPAY_REQUIRE_DOCS=1`` makes it required, as in CI)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from django_ledgepay import client, conf
from django_ledgepay.management.commands.ledgepay_sandbox import Command as SandboxCommand
from django_ledgepay.sandbox import Sandbox

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


def test_the_version_is_written_once_in_pyproject():
    found = re.search(r'^version = "([^"]+)"$', read(ROOT / "pyproject.toml"), re.MULTILINE)
    assert found
    version = found.group(1)
    released = re.findall(r"^## (\d+\.\d+\.\d+) \(", read(ROOT / "CHANGELOG.md"), re.MULTILINE)
    installation = read(DOCS / "installation.md")

    assert released[0] == version  # Released, dated, the newest.
    # The client says the version installed, not one of its own.
    installed = metadata.version("django-ledgepay")
    assert client.USER_AGENT.split("/") == ["django_ledgepay", installed]
    # A pin in the examples names this version; a wheel's file name, none.
    assert set(re.findall(r"@v(\d+\.\d+\.\d+)", installation)) == {version}
    assert not re.search(r"django_ledgepay-\d", installation + read(ROOT / "README.md"))


def test_the_docs_build_offline_without_warnings(tmp_path):
    # Skipped without the docs extra, unless LEDGEPAY_REQUIRE_DOCS=1 (as in CI, where this
    # is the documentation's build).
    if not all(importlib.util.find_spec(name) for name in ("sphinx", "myst_parser", "furo")):
        reason = "the docs extra is not installed (pip install -e '.[docs]')"
        if os.environ.get("LEDGEPAY_REQUIRE_DOCS") == "1":
            pytest.fail(f"LEDGEPAY_REQUIRE_DOCS=1 but {reason}.")
        pytest.skip(reason)
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


def readme_section(title: str) -> str:
    readme = read(ROOT / "README.md")
    return readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_set_up_works_on_a_fresh_startproject(tmp_path):
    """The Installation section's blocks, each added to the file its first line names (its
    ``[..., x]`` read as "the list there, and x"), on what ``startproject`` makes: the first
    ``manage.py check`` passes with warnings while the secrets are unset, and none once the
    development set-up's variables are exported."""
    section = readme_section("Installation")
    blocks = re.findall(r"^```python\n# (\S+)\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    exports = re.findall(r"^export ([^#\n]+)", section, re.MULTILINE)
    exported = dict(pair.split("=", 1) for line in exports for pair in line.split())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "LEDGEPAY_"))}
    env.pop("DATABASE_URL", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=tmp_path,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert run("-m", "django", "startproject", "mysite", ".").returncode == 0
    for name, code in blocks:
        code = re.sub(r"^(\w+) = \[\.\.\., ", r"\1 = [*\1, ", code, flags=re.MULTILINE)
        with (tmp_path / "mysite" / name).open("a", encoding="utf-8") as file:
            file.write(f"\n{code}")
    fresh = run("manage.py", "check")
    development = run("manage.py", "check", "--fail-level", "WARNING", **exported)

    assert [name for name, _ in blocks] == ["settings.py", "settings.py", "urls.py"]
    assert fresh.returncode == 0, fresh.stderr
    assert "Traceback" not in fresh.stderr
    warned = set(re.findall(r"\((django_ledgepay\.[EW]\d{3})\)", fresh.stderr + fresh.stdout))
    assert warned == {"django_ledgepay.W001", "django_ledgepay.W002"}
    assert development.returncode == 0, development.stderr
    assert "no issues" in development.stdout
    # The address the sandbox prints when started as the README says, on its default port.
    parser = SandboxCommand().create_parser("manage.py", "ledgepay_sandbox")
    assert exported["LEDGEPAY_API_BASE"] == Sandbox(port=parser.get_default("port")).api_base
