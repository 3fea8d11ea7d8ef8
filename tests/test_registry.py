"""Op discovery through the gradserve.ops entry-point group."""

import logging
import textwrap

import pytest

from gradserve.server.registry import PluginError, load_registry


def install_fake_plugin(root, dist: str, module: str, source: str, entry_points: dict) -> None:
    """Lay out a minimal installed distribution (a .dist-info folder and a module).

    The module name gets the folder's name appended, so that no test imports a module
    another test left in sys.modules.
    """
    module = f"{module}_{root.name}"
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = [f"{name} = {module}:{attr}" for name, attr in entry_points.items()]
    (info / "entry_points.txt").write_text("[gradserve.ops]\n" + "\n".join(lines) + "\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


GOOD_OP = """
    import numpy as np
    from gradserve.ops import Op
    double = Op("double", 1, forward=lambda x: 2 * x, backward=lambda g, y, x: (2 * g,))
    add = Op("add", 2, forward=np.add, backward=lambda g, y, a, b: (g, g))
    misnamed = Op("other", 1, forward=np.negative, backward=lambda g, y, x: (-g,))
    not_an_op = 42
"""


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch, fresh_entry_points):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_core_ops_come_from_the_core_distribution(registry):
    assert {"add", "mul", "tanh"} <= set(registry)
    for name in ("add", "mul", "tanh"):
        assert registry[name].distribution == "gradserve-ops-core"
        assert registry[name].entry_point == name
        assert registry[name].version


def test_an_installed_plugin_is_discovered(plugin_dir):
    install_fake_plugin(plugin_dir, "fake_double", "fake_double_mod", GOOD_OP, {"double": "double"})
    registry = load_registry()
    assert registry["double"].distribution == "fake_double"
    assert registry["double"].version == "1.0"
    assert "add" in registry


def test_duplicate_op_names_fail_naming_both_distributions(plugin_dir):
    install_fake_plugin(plugin_dir, "fake_adder", "fake_adder_mod", GOOD_OP, {"add": "add"})
    with pytest.raises(PluginError) as caught:
        load_registry()
    assert "gradserve-ops-core" in str(caught.value)
    assert "fake_adder" in str(caught.value)


@pytest.mark.parametrize(
    ("source", "entry", "problem"),
    [
        ("raise ImportError('no such library')", {"broken": "anything"}, "no such library"),
        (GOOD_OP, {"broken": "not_an_op"}, "not a gradserve.ops.Op"),
        (GOOD_OP, {"broken": "misnamed"}, "names an op called 'other'"),
        (GOOD_OP, {"zzz": "misnamed"}, "names an op called 'other'"),  # a name sorting after
    ],
)
def test_a_broken_plugin_is_logged_and_skipped(plugin_dir, caplog, source, entry, problem):
    install_fake_plugin(plugin_dir, "fake_broken", "fake_broken_mod", source, entry)
    with caplog.at_level(logging.WARNING):
        registry = load_registry()
    assert not set(entry) & set(registry)
    assert {"add", "mul", "tanh"} <= set(registry)
    assert "fake_broken" in caplog.text and problem in caplog.text


def test_a_broken_plugin_is_fatal_when_strict(plugin_dir):
    install_fake_plugin(plugin_dir, "fake_broken", "fake_broken_mod", "1/0", {"broken": "x"})
    with pytest.raises(PluginError, match=r"broken.*fake_broken.*ZeroDivisionError"):
        load_registry(strict=True)


def test_allow_list_loads_only_the_named_ops(plugin_dir):
    # The broken plugin is not allowed, so it is never imported and nothing is logged.
    install_fake_plugin(plugin_dir, "fake_broken", "fake_broken_mod", "1/0", {"broken": "x"})
    assert set(load_registry(allow=["add", "tanh"], strict=True)) == {"add", "tanh"}


def test_allow_list_naming_a_missing_op_fails(registry):
    with pytest.raises(PluginError, match="no plugin provides: nosuch"):
        load_registry(allow=["add", "nosuch"])
