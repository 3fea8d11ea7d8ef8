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


def code_block(language: str) -> str:
    blocks = docs_pages.code("docs/plugins.md", language)
    assert len(blocks) == 1
    return blocks[0]


def test_the_example_plugin_is_complete_and_right():
    project = tomllib.loads(code_block("toml"))
    ((name, target),) = project["project"]["entry-points"]["gradserve.ops"].items()
    module, attribute = target.split(":")
    source = code_block("python")
    assert source.startswith(f"# {module}.py\n")
    namespace: dict = {}
    exec(compile(source, f"{module}.py", "exec"), namespace)
    op = namespace[attribute]
    assert isinstance(op, Op) and op.name == name
    assert gradcheck(op).ok
    x = np.array([8.0, 0.5])
    assert op.forward(x) == pytest.approx([3.0, -1.0])
    assert op.backward(np.ones(2), op.forward(x), x)[0] == pytest.approx(1 / (x * np.log(2)))
    assert not op.domain(np.array([0.0, -1.0])).any()
    assert len(source.splitlines()) <= 25
