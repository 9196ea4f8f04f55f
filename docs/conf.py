"""Sphinx configuration of django-ledgepay's documentation (Markdown pages, MyST).

Build offline, warnings as errors:

    .venv/bin/pip install -e ".[docs]"
    .venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import django

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

# Autodoc imports the app, so Django is set up first, with the test suite's settings.
sys.path[:0] = [str(ROOT), str(DOCS / "_ext")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

# The version, from pyproject.toml (tomllib is Python 3.11+; the docs build on 3.10 too).
found = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
release = found.group(1) if found else "unknown"

project = "django-ledgepay"
author = "django-ledgepay developers"
copyright = "django-ledgepay developers, MIT licence"
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "ledgepay_docs",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "_readme_proposal.md",
    "tutorial/mysite/**",
    "Thumbs.db",
    ".DS_Store",
]
suppress_warnings = ["myst.header"]

myst_enable_extensions = ["colon_fence", "deflist", "fieldlist", "tasklist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"

html_theme = "furo"
html_title = f"django-ledgepay {release}"
html_static_path: list[str] = []
# No request leaves the build: no intersphinx, no remote images.
