"""Sphinx directives that document django-ledgepay from the code itself.

``{ledgepay-commands}`` renders every ``ledgepay_*`` management command: its help text and
its options as ``manage.py <command> --help`` shows them, without Django's common options.
A command added to ``django_ledgepay/management/commands/`` appears with no change here.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

#: Options every Django command has; the reference links to Django's docs for them.
COMMON_OPTIONS = frozenset(
    {
        "help",
        "version",
        "verbosity",
        "settings",
        "pythonpath",
        "traceback",
        "no_color",
        "force_color",
        "skip_checks",
    }
)


def ledgepay_commands() -> list[tuple[str, Any]]:
    """(name, Command instance) for each of the app's management commands, by name."""
    package = importlib.import_module("django_ledgepay.management.commands")
    found = []
    for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if module.name.startswith("_"):
            continue
        command_module = importlib.import_module(f"{package.__name__}.{module.name}")
        found.append((module.name, command_module.Command()))
    return found


def prose(text: str) -> nodes.paragraph:
    """A paragraph where options and setting names are literals (and so keep their two
    hyphens, which Sphinx's smart quotes would join into a dash)."""
    paragraph = nodes.paragraph()
    for part in re.split(r"(--[a-z][a-z-]*|LEDGEPAY_[A-Z_]+)", text):
        if part.startswith(("--", "LEDGEPAY_")):
            paragraph += nodes.literal(text=part)
        elif part:
            paragraph += nodes.Text(part)
    return paragraph


def option_label(action: argparse.Action) -> str:
    if not action.option_strings:
        return str(action.metavar or action.dest)
    label = ", ".join(action.option_strings)
    if action.nargs != 0:
        label += f" {action.metavar or action.dest.upper()}"
    return label


def option_help(action: argparse.Action) -> str:
    text = (action.help or "").replace("%%", "%")
    if action.choices and "{" not in text:
        text += f" One of: {', '.join(str(choice) for choice in action.choices)}."
    return text.strip()


class LedgePayCommands(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        result: list[nodes.Node] = []
        for name, command in ledgepay_commands():
            parser = command.create_parser("manage.py", name)
            section_id = nodes.make_id(f"command-{name}")
            section = nodes.section(ids=[section_id])
            section += nodes.title("", "", nodes.literal(text=name))
            section += prose(str(command.help))
            actions = [a for a in parser._actions if a.dest not in COMMON_OPTIONS]
            usage = " ".join(
                f"[{option_label(a)}]" if a.option_strings and not a.required else option_label(a)
                for a in actions
            )
            usage_block = nodes.literal_block(text=f"python manage.py {name} {usage}".rstrip())
            usage_block["language"] = "text"
            section += usage_block
            if actions:
                options = nodes.definition_list()
                for action in actions:
                    item = nodes.definition_list_item()
                    item += nodes.term("", "", nodes.literal(text=option_label(action)))
                    item += nodes.definition("", prose(option_help(action)))
                    options += item
                section += options
            self.env.note_dependency(command.__module__.replace(".", "/") + ".py")
            result.append(section)
        return result


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("ledgepay-commands", LedgePayCommands)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
