"""Command-line options that also read a ``GRADSERVE_*`` environment variable, and help
text that shows each option's default and variable.

An option ``--max-message-mb`` reads GRADSERVE_MAX_MESSAGE_MB; a flag on the command line
wins. Options are declared with plain defaults; ``read_environment`` then gives each option
of a parser its variable. A value from the environment is converted by the option's own
type when the command line is parsed, so a bad one is a usage error that names the variable
(``GRADSERVE_PORT='abc' (from the environment): 'abc' is not a port``).

Only the standard library is imported: ``gradserve health`` (``gradserve.health_probe``) uses
this too, and probes must start quickly.
"""

import argparse
import os
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping

PREFIX = "GRADSERVE_"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")


def variable(option: str) -> str:
    """``--max-nodes`` -> ``GRADSERVE_MAX_NODES``."""
    return PREFIX + option.lstrip("-").upper().replace("-", "_")


class _FromEnvironment(str):
    """A default read from the environment. argparse converts string defaults with the
    option's type; the wrapped type (``_naming``) recognises this class and names the
    variable when the conversion fails."""

    variable: str


def _naming(name: str, convert: Callable | None, choices: Iterable | None) -> Callable:
    """``convert``, with errors on values from the environment naming ``name``."""

    def parse(text: str):
        if not isinstance(text, _FromEnvironment):
            return text if convert is None else convert(text)
        try:
            value = text if convert is None else convert(str(text))
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise argparse.ArgumentTypeError(
                f"{name}={str(text)!r} (from the environment): {exc}"
            ) from None
        if choices is not None and value not in choices:
            allowed = ", ".join(map(str, choices))
            raise argparse.ArgumentTypeError(
                f"{name}={str(text)!r} (from the environment): choose from {allowed}"
            )
        return value

    return parse


def _switch(name: str) -> Callable[[str], bool]:
    """The type of an on/off flag's variable (a flag takes no value on the command line)."""

    def parse(text: str) -> bool:
        if text.strip().lower() in TRUE_WORDS:
            return True
        if text.strip().lower() in FALSE_WORDS:
            return False
        raise argparse.ArgumentTypeError(
            f"{name}={str(text)!r} (from the environment): "
            f"use one of {', '.join(TRUE_WORDS)} or {', '.join(w for w in FALSE_WORDS if w)}"
        )

    return parse


def _is_switch(action: argparse.Action) -> bool:
    return action.nargs == 0 and action.const is True


def environment_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options of ``parser`` that read a variable (after ``read_environment``)."""
    return [a for a in parser._actions if getattr(a, "environment_variable", None)]


def read_environment(
    parser: argparse.ArgumentParser,
    only: Iterable[str] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Give every long option of ``parser`` (or the options named in ``only``, such as
    ``"--target"``) its GRADSERVE_ variable: the variable's value, when set, becomes the
    option's default, checked by the option's type when the command line is parsed."""
    chosen = set(only) if only is not None else None
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or action.dest in ("help", "version"):
            continue
        if chosen is not None and longs[0] not in chosen:
            continue
        name = variable(longs[0])
        action.environment_variable = name
        action.builtin_default = action.default
        if _is_switch(action):
            action.type = _switch(name)
        else:
            action.type = _naming(name, action.type, action.choices)
        if name in environ:
            value = _FromEnvironment(environ[name])
            value.variable = name
            action.default = value


def default_text(action: argparse.Action) -> str:
    """How help and the docs show an option's built-in default."""
    default = getattr(action, "builtin_default", action.default)
    if _is_switch(action) or default is None or default == "":
        return "off" if _is_switch(action) else "none"
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, int) and default >= 100_000:
        return f"{default:,}"  # 20,000,000; ports and counts stay plain
    return str(default)


class HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default and the variable that sets it, as
    "(default: 64; env: GRADSERVE_MAX_MESSAGE_MB)". A help that states its own default
    ends with "(default: ...)", and the variable joins it. Lines break at spaces only, so
    that an option's name is never cut at its dashes."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        name = getattr(action, "environment_variable", None)
        states_default = "(default" in text and text.endswith(")")
        shows_default = not states_default and (
            name is not None
            or (action.default not in (None, argparse.SUPPRESS) and not _is_switch(action))
        )
        extra = [f"default: {default_text(action)}"] if shows_default else []
        if name is not None:
            extra.append(f"env: {name}")
        if not extra:
            return text
        if states_default:
            return f"{text[:-1]}; {'; '.join(extra)})"
        return f"{text} ({'; '.join(extra)})"

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def markdown_table(parser: argparse.ArgumentParser) -> str:
    """A Markdown table of the options of ``parser`` that read a variable: option, default,
    variable, help. docs/server.md holds the one of ``gradserve serve`` (docs/generate.py
    writes it, and a test checks that it is current)."""
    rows = ["| option | default | environment variable | what it does |", "|---|---|---|---|"]
    for action in environment_actions(parser):
        text, default = action.help or "", default_text(action)
        stated = re.search(r" \(default: ([^)]*)\)$", text)
        if stated:
            text, default = text[: stated.start()], stated[1]
        option = ", ".join(f"`{o}`" for o in action.option_strings)
        cells = [option, default, f"`{action.environment_variable}`", text.replace("|", "\\|")]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
