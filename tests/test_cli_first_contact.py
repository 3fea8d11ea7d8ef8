"""What a new user meets first on the command line: --version, rendered help that shows
every default and variable, errors from the environment that name the variable,
`gradserve ops list` and `gradserve health --service` for a name that does not exist."""

import argparse
import json
import re
import subprocess
from importlib.metadata import version

import pytest
from servers import GRADSERVE, Served

from gradserve import cli_options
from gradserve.client import connect
from gradserve.server import cli
from gradserve.v1 import gradserve_pb2 as pb


def gradserve(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([GRADSERVE, *args], capture_output=True, text=True, timeout=60, env=env)


def subparser(parser, *path: str):
    """The parser of ``gradserve serve`` (path ``("serve",)``), ``ops list`` and so on."""
    for name in path:
        (commands,) = [a for a in parser._actions if a.dest in ("command", "ops_command")]
        parser = commands.choices[name]
    return parser


def flat(text: str) -> str:
    return " ".join(text.split())


def test_version_is_the_installed_distributions():
    result = gradserve("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"gradserve {version('gradserve-server')}"


@pytest.mark.parametrize(
    "command", [(), ("serve",), ("health",), ("ops",), ("ops", "list"), ("ops", "check")]
)
def test_help_is_rendered_text(command):
    result = gradserve(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "`" not in result.stdout  # no reStructuredText, no Markdown
    description = result.stdout.split("\n\n")[1]  # after the usage: whole sentences
    assert flat(description).endswith("."), description
    assert "options:" in result.stdout


def test_the_top_level_help_lists_every_command_with_whole_sentences():
    text = flat(gradserve("--help").stdout)
    assert cli.DESCRIPTION in text and cli.EPILOG in text
    for command in ("serve", "health", "ops"):
        assert re.search(rf"\b{command}\s+\w", text), command


def options_help(help_text: str) -> dict[str, str]:
    """Each long option's help paragraph in a --help text, flattened."""
    entries = re.split(r"\n  (?=-)", help_text.split("options:", 1)[1])
    return {entry.split()[0].rstrip(","): flat(entry) for entry in entries if entry.strip()}


def test_serve_help_shows_every_default_and_variable():
    shown = options_help(gradserve("serve", "--help").stdout)
    serve = subparser(cli.build_parser(), "serve")
    options = [a for a in serve._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 25
    for action in options:
        name = action.option_strings[-1]
        variable = cli_options.variable(name)
        assert action.environment_variable == variable
        text = shown[name]
        assert f"env: {variable})" in text, text
        assert "(default: " in text, text
        if "(default" not in action.help:  # not stated in words ("the number of cores")
            assert f"(default: {cli_options.default_text(action)};" in text, text


def serve_args(monkeypatch, **variables: str):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return cli.build_parser().parse_args(["serve"])


def value_for(action) -> tuple[str, object]:
    """A valid variable value for ``action``, and what its own type parses it to."""
    if action.nargs == 0:
        return "yes", True
    if action.choices:
        choice = next(c for c in action.choices if c != action.builtin_default)
        return choice, choice
    for text in ("7", "debug"):
        try:
            return text, action.type(text)  # a command-line string: the option's own type
        except argparse.ArgumentTypeError:
            continue
    raise AssertionError(f"no test value for {action.dest}")


def test_every_serve_option_reads_its_variable(monkeypatch):
    serve = subparser(cli.build_parser(), "serve")
    for action in cli_options.environment_actions(serve):
        text, parsed = value_for(action)
        args = serve_args(monkeypatch, **{action.environment_variable: text})
        assert getattr(args, action.dest) == parsed != action.builtin_default, action.dest
        monkeypatch.delenv(action.environment_variable)


def test_a_flag_wins_over_its_variable_and_a_bad_variable_is_then_unread(monkeypatch):
    monkeypatch.setenv("GRADSERVE_PORT", "abc")
    assert cli.build_parser().parse_args(["serve", "--port", "6000"]).port == 6000
    monkeypatch.setenv("GRADSERVE_PORT", "6001")
    assert cli.build_parser().parse_args(["serve", "--port", "6000"]).port == 6000
    assert serve_args(monkeypatch).port == 6001


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GRADSERVE_PORT", "abc", "'abc' is not a port (0-65535)"),
        ("GRADSERVE_WORKERS", "0", "must be at least 1, got 0"),
        ("GRADSERVE_LOG_FORMAT", "xml", "choose from text, json"),
        ("GRADSERVE_STRICT_PLUGINS", "maybe", "use one of 1, true, yes, on or 0, false"),
        ("GRADSERVE_GRACE", "soon", "'soon' is not a number of seconds"),
    ],
)
def test_a_bad_variable_is_a_usage_error_naming_it(monkeypatch, capsys, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["serve"])
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"{variable}={value!r} (from the environment): {message}" in line, line


def test_a_bad_port_variable_from_the_shell_names_it():
    result = gradserve("serve", env={"PATH": "/usr/bin:/bin", "GRADSERVE_PORT": "abc"})
    assert result.returncode == 2
    assert "GRADSERVE_PORT='abc'" in result.stderr and "Traceback" not in result.stderr


def table(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def test_ops_list_shows_a_running_servers_ops():
    with Served("--workers", "1", "--ops", "add,sum,tanh") as served:
        target = f"127.0.0.1:{served.port}"
        listed = gradserve("ops", "list", "--target", target)
        as_json = gradserve("ops", "list", "--target", target, "--json")
        channel, stub = connect(target)
        with channel:
            reference = {op.name: op for op in stub.ListOps(pb.ListOpsRequest()).ops}
    assert listed.returncode == 0, listed.stderr
    core = version("gradserve-ops-core")
    header, *rows = table(listed.stdout)
    assert header == ["name", "arity", "second", "order", "distribution"]
    assert rows == [
        ["add", "2", "yes", "gradserve-ops-core", core],
        ["sum", "any", "yes", "gradserve-ops-core", core],
        ["tanh", "1", "yes", "gradserve-ops-core", core],
    ]
    ops = json.loads(as_json.stdout)
    assert [op["name"] for op in ops] == ["add", "sum", "tanh"]
    for op in ops:
        info = reference[op["name"]]
        assert op["arity"] == (None if info.variadic else info.arity)
        assert (op["variadic"], op["second_order"], op["doc"]) == (
            info.variadic,
            info.second_order,
            info.doc,
        )
        assert (op["distribution"], op["version"]) == ("gradserve-ops-core", core)


def test_ops_list_against_nothing_says_so_in_one_line():
    result = gradserve("ops", "list", "--target", "127.0.0.1:1", "--timeout", "5")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "cannot list the ops of 127.0.0.1:1: no gradserve server answers there" in line


def test_health_for_an_unknown_service_lists_the_known_ones():
    with Served("--workers", "1") as served:
        target = f"127.0.0.1:{served.port}"
        unknown = gradserve("health", "--target", target, "--service", "gradserve.v1.Nope")
        known = gradserve("health", "--target", target, "--service", "gradserve.v1.GradientService")
    assert known.returncode == 0 and "SERVING" in known.stdout
    assert unknown.returncode == 1
    (line,) = unknown.stderr.splitlines()
    assert "no service 'gradserve.v1.Nope'" in line
    assert "'gradserve.v1.GradientService'" in line and "''" in line
