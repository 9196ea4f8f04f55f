#!/usr/bin/env python3
"""Run the whole demo: install, migrate, a demo admin, the LedgePay sandbox and the shop.

    python3 example_project/demo.py [--shop-port 8000] [--sandbox-port 8765] [--tasks db]

``--tasks db`` runs the shop's signal receivers (an order marked paid) on a task worker of
django-tasks-db's database backend, started beside the shop, instead of in the web process.

Standard library only, Python 3.10+. Ctrl-C stops everything. The shop's database
(example_project/db.sqlite3) and the sandbox's state (example_project/sandbox-state.json)
are kept for the next run; delete both to start afresh.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = REPO / ".venv-demo"
STATE = HERE / "sandbox-state.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shop-port", type=int, default=int(os.environ.get("SHOP_PORT", 8000)))
    parser.add_argument(
        "--sandbox-port", type=int, default=int(os.environ.get("SANDBOX_PORT", 8765))
    )
    parser.add_argument(
        "--tasks",
        choices=["immediate", "db"],
        default="immediate",
        help="immediate: receivers run in the web process after each commit (the default); "
        "db: on a worker of django-tasks-db's database backend, started here too.",
    )
    args = parser.parse_args()
    for port in (args.shop_port, args.sandbox_port):
        if answers(port):
            print(f"Port {port} is taken; choose another with --shop-port/--sandbox-port.")
            return 2

    python = install(tasks_db=args.tasks == "db")
    env = {
        **os.environ,
        "SHOP_TASKS": args.tasks,
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "LEDGEPAY_API_BASE": f"http://127.0.0.1:{args.sandbox_port}/v1",
        "PYTHONUNBUFFERED": "1",
    }
    manage = [str(python), "manage.py"]
    step("Migrating the database")
    subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], cwd=HERE, env=env, check=True)
    subprocess.run([*manage, "shop_demo_setup"], cwd=HERE, env=env, check=True)

    step("Starting the sandbox and the shop")
    webhook_url = f"http://127.0.0.1:{args.shop_port}/ledgepay/webhook/"
    children = [
        subprocess.Popen(
            [
                *manage,
                "ledgepay_sandbox",
                "--port",
                str(args.sandbox_port),
                "--webhook-url",
                webhook_url,
                # Payments, refunds and pending webhooks survive a restart of the demo, as the
                # shop's database does: an old order can still be synced and refunded.
                "--state",
                str(STATE),
            ],
            cwd=HERE,
            env=env,
        ),
        subprocess.Popen(
            [*manage, "runserver", f"127.0.0.1:{args.shop_port}", "--noreload"],
            cwd=HERE,
            env=env,
        ),
    ]
    if args.tasks == "db":
        # The worker that runs the receivers' deliveries (and their retries).
        children.append(
            subprocess.Popen(
                [*manage, "db_worker", "--no-reload", "--interval", "0.2"], cwd=HERE, env=env
            )
        )

    def stop() -> None:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()

    signal.signal(signal.SIGINT, interrupt)  # Even where a shell started it ignoring SIGINT.
    signal.signal(signal.SIGTERM, interrupt)
    try:
        deadline = time.monotonic() + 60
        while not (answers(args.shop_port) and answers(args.sandbox_port)):
            if time.monotonic() > deadline or any(c.poll() is not None for c in children):
                print("The demo did not start; see the messages above.")
                stop()
                return 1
            time.sleep(0.2)
        print(
            f"\n  Open http://127.0.0.1:{args.shop_port}/  (admin: "
            f"http://127.0.0.1:{args.shop_port}/admin/, user admin, password admin)\n"
            f"  LedgePay sandbox: http://127.0.0.1:{args.sandbox_port}/v1\n"
            "  Stop with Ctrl-C.\n",
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("A part of the demo stopped; stopping the rest.")
        stop()
        return 1
    except KeyboardInterrupt:
        print("\nStopping.")
        stop()
        return 0


def interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C and SIGTERM stop the demo."""
    raise KeyboardInterrupt


def install(*, tasks_db: bool = False) -> Path:
    """A virtual environment with django-ledgepay (from this checkout) and django-environ,
    and django-tasks-db when the receivers run on its worker."""
    python = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    marker = VENV / ".installed"
    if not marker.exists():
        step(f"Installing into {VENV.name} (once)")
        venv.EnvBuilder(with_pip=True).create(VENV)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-e", str(REPO), "django-environ"],
            check=True,
        )
        marker.touch()
    tasks_marker = VENV / ".installed-tasks-db"
    if tasks_db and not tasks_marker.exists():
        step("Installing django-tasks-db (once)")
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "django-tasks-db>=0.13"], check=True
        )
        tasks_marker.touch()
    return python


def answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def step(text: str) -> None:
    print(f"== {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
