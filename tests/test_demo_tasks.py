"""The example shop with its receivers on a django-tasks-db worker (demo.py --tasks db)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SHOP = Path(__file__).resolve().parent.parent / "example_project"


@pytest.mark.skipif(
    importlib.util.find_spec("django_tasks_db") is None,
    reason="django-tasks-db is not installed (the tasks extra)",
)
def test_the_shop_runs_its_receivers_on_the_database_backend(tmp_path):
    env = {
        **os.environ,
        "SHOP_TASKS": "db",
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'shop.sqlite3'}",
    }
    script = (
        "import django; django.setup()\n"
        "from django.conf import settings\n"
        "from django_ledgepay import tasks\n"
        "print(type(tasks.backend()).__name__, 'django_tasks_db' in settings.INSTALLED_APPS)\n"
    )
    check = subprocess.run(
        [sys.executable, "manage.py", "check", "--fail-level", "WARNING"],
        cwd=SHOP,
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    shown = subprocess.run(
        [sys.executable, "-c", script], cwd=SHOP, env=env, capture_output=True, text=True
    )
    assert shown.stdout.split() == ["DatabaseBackend", "True"], shown.stderr


def test_the_demo_offers_the_database_backend():
    usage = subprocess.run(
        [sys.executable, str(SHOP / "demo.py"), "--help"], capture_output=True, text=True
    )
    assert usage.returncode == 0
    assert "--tasks {immediate,db}" in usage.stdout
