"""The op lists of docs/ops.md and docs/plugins.md match what the ops report, and the
example plugin of docs/plugins.md works."""

import re
import tomllib

import docs_pages
import numpy as np
import pytest
from test_ops_plugin import special  # noqa: F401 (a fixture)

from gradserve.ops import Op
from gradserve.ops.gradcheck import gradcheck
from gradserve.v1 import gradserve_pb2 as pb


def listed_ops(page: str) -> dict[str, tuple[int, str]]:
    """name -> (arity, 0 for variadic; doc) for each op listed on the page."""
    ops = {}
    for line in docs_pages.text(page).splitlines():
        if match := re.fullmatch(r"- \*\*`(\w+)`\*\* \((?:(\d+) inputs?|variadic)\): (.*)", line):
            ops[match[1]] = (int(match[2] or 0), match[3])
    return ops


def test_the_ops_list_is_what_list_ops_reports(stub):
    reported = {
        op.name: (op.arity, op.doc)
        for op in stub.ListOps(pb.ListOpsRequest()).ops
        if op.distribution == "gradserve-ops-core"
    }
    assert listed_ops("docs/ops.md") == reported


def test_the_special_plugins_list_is_what_its_ops_say(special):  # noqa: F811
    ops = [special.erf, special.gelu, special.logaddexp]
    assert listed_ops("docs/plugins.md") == {op.name: (op.arity, op.doc) for op in ops}


def example_module(block: int, module: str) -> dict:
    """The names that the page's ``block``-th Python block defines, run as the module it
    names."""
    source = docs_pages.code("docs/plugins.md", "python")[block]
    assert source.startswith(f"# {module}.py\n")
    assert len(source.splitlines()) <= 25
    namespace: dict = {}
    exec(compile(source, f"{module}.py", "exec"), namespace)
    return namespace


def test_the_example_plugin_is_complete_and_right():
    """The page teaches the formula form first: its op passes gradcheck, gives log2 and
    its derivatives' closed forms (the second derived from the formulas), on arrays and on
    floats; the explicit form that follows gives the same op."""
    assert len(docs_pages.code("docs/plugins.md", "toml")) == 1
    project = tomllib.loads(docs_pages.code("docs/plugins.md", "toml")[0])
    ((name, target),) = project["project"]["entry-points"]["gradserve.ops"].items()
    module, attribute = target.split(":")
    blocks = docs_pages.code("docs/plugins.md", "python")
    assert len(blocks) == 2 and "formula_op(" in blocks[0] and "Op(" in blocks[1]
    formula, explicit = (example_module(block, module)[attribute] for block in (0, 1))
    x = np.array([8.0, 0.5, 3.0])
    for op in (formula, explicit):
        assert isinstance(op, Op) and op.name == name
        assert gradcheck(op).ok
        assert op.forward(x) == pytest.approx([3.0, -1.0, np.log2(3.0)], rel=1e-15)
        slope = 1 / (x * np.log(2))
        assert op.backward(np.ones(3), op.forward(x), x)[0] == pytest.approx(slope, rel=1e-15)
        assert op.second(op.forward(x), x)[0] == pytest.approx(-slope / x, rel=1e-14)
        assert op.scalar(8.0) == pytest.approx(3.0, rel=1e-15)
        assert op.scalar_backward(1.0, 3.0, 8.0)[0] == pytest.approx(1 / (8 * np.log(2)))
        assert not op.domain(np.array([0.0, -1.0])).any() and op.domain(x).all()
    assert formula.formulas is not None and explicit.formulas is None
