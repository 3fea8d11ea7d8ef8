"""Ops written once as formulas (gradserve.ops.formulas): the rendered array, float and inline
code against the formulas run directly, the explicit five-function form beside it, and what a
formula may not do."""

import ast
import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest
from fuzz_reference import STANDARD, random_graph

from gradserve.ops import Op, standard
from gradserve.ops.formulas import ARRAY, FLOAT, Code, Elementwise, emit_condition, formula_op
from gradserve.server.engine import small_call
from gradserve.server.engine.plan import compile_graph

ROOT = Path(__file__).resolve().parents[1]
SPECIAL = ROOT / "ops_plugins" / "special"
POINTS = np.concatenate(
    [
        np.random.default_rng(3).uniform(-6.0, 6.0, 400),
        [0.0, -0.0, 1.0, -1.0, 2.0, 0.5, 30.0, -30.0, 710.5, -710.5, np.inf, -np.inf, np.nan],
    ]
)


@pytest.fixture(scope="module")
def formula_ops(request) -> dict[str, Op]:
    """Every op of the standard ops and the special plugin, all written as formulas."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.syspath_prepend(str(SPECIAL))
    import gradserve_ops_special as special

    request.addfinalizer(monkeypatch.undo)
    modules = (standard, special)
    return {op.name: op for m in modules for op in vars(m).values() if isinstance(op, Op)}


def columns(op: Op) -> list[np.ndarray]:
    k = op.arity or 3
    xs = [np.roll(POINTS, 5 * j) for j in range(k)]
    if op.name == "pow":  # integer exponents, where a negative base has a real power
        xs[1] = np.round(xs[1])
    return [x.reshape(-1, 1) for x in xs]


def bits_equal(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.broadcast_to(b, np.shape(a)), equal_nan=True)


def test_every_standard_and_special_op_is_written_as_formulas(formula_ops):
    assert len(formula_ops) == 22
    assert all(op.formulas is not None for op in formula_ops.values())


def test_the_rendered_array_code_is_the_formulas_run_on_numpy(formula_ops):
    for name, op in formula_ops.items():
        xs = columns(op)
        f = op.formulas
        with np.errstate(all="ignore"):
            y = op.forward(*xs)
            g = np.roll(POINTS, 11).reshape(-1, 1)
            assert bits_equal(y, f.value(ARRAY, *xs)), name
            for got, want in zip(op.backward(g, y, *xs), f.grads(ARRAY, g, y, *xs), strict=True):
                assert bits_equal(got, want), name
            for got, want in zip(op.second(y, *xs), f.second(ARRAY, y, *xs), strict=True):
                assert bits_equal(got, want), name


def test_the_float_code_is_the_formulas_run_on_floats(formula_ops):
    """Where the formulas run on ``FLOAT`` raise nothing (its where computes both branches,
    the rendered code only the one taken), they give the float code's bits."""
    checked = 0
    for name, op in formula_ops.items():
        if op.scalar is None:
            continue
        f = op.formulas
        for point in zip(*(x[:, 0].tolist() for x in columns(op)), strict=True):
            try:
                want = f.value(FLOAT, *point)
                y = op.scalar(*point)
                want_grads = f.grads(FLOAT, -1.5, y, *point)
            except (ArithmeticError, ValueError):
                continue
            assert y == want or (math.isnan(y) and math.isnan(want)), (name, point)
            if op.scalar_backward is not None:
                got = op.scalar_backward(-1.5, y, *point)
                for a, b in zip(got, want_grads, strict=True):
                    assert a == b or (math.isnan(a) and math.isnan(b)), (name, point)
            checked += 1
    assert checked > 5000


def explicit_copy(op: Op) -> Op:
    """The op in the explicit five-function form, as a plugin written that way gives it."""
    return Op(
        op.name,
        op.arity,
        forward=op.forward,
        backward=op.backward,
        scalar=op.scalar,
        scalar_backward=op.scalar_backward,
        second=op.second,
        domain=op.domain,
        doc=op.doc,
    )


@pytest.mark.parametrize("seed", range(12))
def test_compiled_programs_inline_formula_ops_as_they_call_explicit_ones(seed):
    """Inline code (formula ops) and calls of the scalar functions (explicit-form ops) give
    the same bits, in looped and compiled programs."""
    formulas = {op.name: op for op in vars(standard).values() if isinstance(op, Op)}
    explicit = {name: explicit_copy(op) for name, op in formulas.items()}
    rng = random.Random(seed)
    rg = random_graph(rng, STANDARD, rng.choice([20, 100, 600]), 1, rng.choice([0.0, 0.9]))
    results = []
    for ops in (formulas, explicit):
        plan = compile_graph(rg.graph, ops)
        for compiled in (False, True):
            program = small_call.program_of(plan, compiled=compiled)
            if program is None:  # a looped program is for small plans only
                continue
            assert program.compiled == compiled
            v = program.forward(list(rg.rows[0]))
            if v is None:  # outside a domain the compiled program checks inline
                results.append((compiled, v, None))
                continue
            g = [0.0] * len(v)
            g[-1] = 1.0  # the last node's: the lists are in node order
            results.append((compiled, v, program.backward(v, g)))
    assert len(results) in (2, 4)
    half = len(results) // 2
    for (c1, v1, g1), (c2, v2, g2) in zip(results[:half], results[half:], strict=True):
        assert c1 == c2 and v1 == v2 and g1 == g2


DOMAIN_POINTS = [0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 2.5, -2.5, 1e300, -1e300, 3e-320]


@pytest.mark.parametrize("name", ["div", "log", "sqrt", "pow"])
def test_a_domain_s_float_code_is_the_domain_on_arrays(name):
    """The float code that compiled programs check inline (``emit_condition``) against the
    domain run on arrays, at every pair of finite points: signed zeros, integers, halves
    (np.round and Python's round both round half to even), huge and subnormal values."""
    op = getattr(standard, name if name != "pow" else "pow_")
    arity = op.arity
    code = Code(array=False)
    names = [f"x{i}" for i in range(arity)]
    statements, text = emit_condition(op.domain, names, code)
    lines = [f" {statement}" for statement in statements]
    source = "\n".join([f"def inside({', '.join(names)}):", *lines, f" return {text}"])
    namespace = dict(code.namespace)
    exec(source, namespace)
    points = [tuple(p) for p in itertools.product(DOMAIN_POINTS, repeat=arity)]
    on_arrays = op.domain(*np.array(points).T).tolist()
    assert [bool(namespace["inside"](*p)) for p in points] == on_arrays
    assert False in on_arrays and True in on_arrays


def test_a_domain_written_with_other_functions_gets_no_float_code():
    """Traced with expressions, a domain calling NumPy's functions raises or gives no
    expression: it stays an array check."""
    code = Code(array=False)
    assert emit_condition(lambda x: np.abs(x) <= 1.0, ["x0"], code) is None
    assert emit_condition(lambda x: np.isfinite(x), ["x0"], code) is None
    assert emit_condition(lambda x: np.ones_like(x, dtype=bool), ["x0"], code) is None
    assert emit_condition(lambda x: np.round(x, 2) == x, ["x0"], code) is None


def test_pow_second_derivative_in_x_is_zero_where_the_first_is_constant():
    """d2/dx2 of x^p is p (p-1) x^(p-2): 0 for p = 1 and p = 0, also at x = 0, where
    x^(p-2) is inf and 0 * inf would be NaN (issue 26: such a mutant survived)."""
    x = np.array([[0.0], [0.0], [0.0], [2.0], [-3.0]])
    p = np.array([[1.0], [0.0], [2.0], [1.0], [1.0]])
    with np.errstate(all="ignore"):
        dxx, _, _ = standard.pow_.second(standard.pow_.forward(x, p), x, p)
    assert dxx[:, 0].tolist() == [0.0, 0.0, 2.0, 0.0, 0.0]


def test_a_formula_cannot_branch_on_its_inputs_with_if():
    with pytest.raises(TypeError, match=r"m\.where"):
        formula_op("bad", 1, value=lambda m, x: x if x > 0 else -x, grads=lambda m, g, y, x: (g,))


def test_a_formula_calling_a_function_without_a_float_form_gets_no_float_code():
    op = formula_op(
        "lae", 2, value=lambda m, a, b: m.logaddexp(a, b), grads=lambda m, g, y, a, b: (g, g)
    )
    assert op.scalar is None and op.scalar_backward is None
    assert op.forward(np.array([0.0]), np.array([0.0]))[0] == math.log(2.0)


def test_an_expression_used_twice_is_computed_once_on_floats():
    calls = []

    def counted(x):
        calls.append(x)
        return math.exp(x)

    f = Elementwise("f", np.exp, counted)

    def value(m, x):
        e = f(x)
        return e * e + e

    op = formula_op("twice", 1, value=value, grads=lambda m, g, y, x: (g,))
    assert op.scalar(1.5) == math.exp(1.5) * math.exp(1.5) + math.exp(1.5)
    assert calls == [1.5]


def test_where_on_floats_computes_only_the_branch_taken():
    op = formula_op(
        "safe_log",
        1,
        value=lambda m, x: m.where(x > 0, m.log(m.where(x > 0, x, 1.0)), 0.0),
        grads=lambda m, g, y, x: (m.where(x > 0, g / x, 0.0),),
    )
    assert op.scalar(-1.0) == 0.0 and op.scalar_backward(2.0, 0.0, 0.0) == (0.0,)
    assert op.scalar(math.e) == 1.0


def test_the_engine_imports_no_plugin():
    """The engine sees ops through the registry and the contract package, never a plugin."""
    for path in (ROOT / "server" / "gradserve" / "server" / "engine").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(("gradserve.ops.standard", "gradserve_ops")), path


def derived(op: Op) -> Op:
    """The op from its value and grads formulas only: second derivatives derived."""
    f = op.formulas
    return formula_op(op.name, op.arity, value=f.value, grads=f.grads, domain=op.domain)


def test_second_derivatives_derived_from_the_grads_agree_with_the_written_ones(ops):
    """Away from kinks and special cases, differentiating each standard op's grads formula
    gives its written second derivatives (themselves checked against closed forms in
    test_ops_second.py) to within rounding."""
    rng = np.random.default_rng(4)
    for name, op in ops.items():
        if op.arity is None:
            continue
        xs = [rng.uniform(0.3, 3.0, (300, 1)) for _ in range(op.arity)]
        if name == "pow":
            xs[1] = rng.uniform(1.2, 3.0, (300, 1))
        y = op.forward(*xs)
        written, got = op.second(y, *xs), derived(op).second(y, *xs)
        if got == ():  # piecewise linear: every second derivative 0 (a linear op's ())
            assert all(not np.any(w) for w in written), name
            continue
        for w, d in zip(written, got, strict=True):
            np.testing.assert_allclose(d, w, rtol=1e-13, atol=1e-15, err_msg=name)


def test_a_plugin_op_without_second_derivatives_gets_them_derived():
    softsign = formula_op(
        "softsign",
        1,
        value=lambda m, x: x / (1.0 + m.abs(x)),
        grads=lambda m, g, y, x: (g / m.square(1.0 + m.abs(x)),),
    )
    x = np.random.default_rng(5).uniform(-4.0, 4.0, (200, 1))
    (got,) = softsign.second(softsign.forward(x), x)
    closed_form = -2.0 * np.sign(x) / (1.0 + np.abs(x)) ** 3
    np.testing.assert_allclose(got, closed_form, rtol=1e-13)
    from gradserve.ops.gradcheck import gradcheck

    assert gradcheck(softsign).ok


def test_formulas_calling_an_elementwise_function_get_no_derived_second():
    f = Elementwise("f", np.exp, math.exp)
    op = formula_op("e", 1, value=lambda m, x: f(x), grads=lambda m, g, y, x: (g * f(x),))
    assert op.second is None and op.scalar is not None


# One grads formula a rule of ``gradserve.ops.derivatives``, of two inputs x and w in
# [0.5, 2] (inside every function's domain, off every kink: x * x != w there, x != w).
DERIVATION_CASES = {
    "exp": lambda m, x, w: m.exp(x * w),
    "log": lambda m, x, w: m.log(x * w),
    "log1p": lambda m, x, w: m.log1p(x * w),
    "sqrt": lambda m, x, w: m.sqrt(x * w),
    "tanh": lambda m, x, w: m.tanh(x * w),
    "cosh": lambda m, x, w: m.cosh(x - w),
    "sinh": lambda m, x, w: m.sinh(x - w),
    "sin": lambda m, x, w: m.sin(x * w),
    "cos": lambda m, x, w: m.cos(x * w),
    "abs": lambda m, x, w: m.abs(x - w) * x,
    "square": lambda m, x, w: m.square(x + w),
    "power": lambda m, x, w: m.power(x, w),
    "maximum": lambda m, x, w: m.maximum(x * x, w) * w,
    "minimum": lambda m, x, w: m.minimum(x * x, w) * w,
    "logaddexp": lambda m, x, w: m.logaddexp(x, x * w),
    "where": lambda m, x, w: m.where(x > w, x * w, x / w),
    "neg and -": lambda m, x, w: -(x - w * w),
    "* and +": lambda m, x, w: x * -1.0 + x * w,  # a constant -1 derivative in a sum
}


@pytest.mark.parametrize("case", sorted(DERIVATION_CASES))
def test_each_derivation_rule_agrees_with_central_differences(case):
    """A plugin op whose grads formula is one rule's function F of (x, w): the derived
    ``d F / dx``, ``d F / dw`` and ``d (x F) / dw`` against central differences of the op's
    own first derivatives (error O(h^2), about 1e-9 here)."""
    f = DERIVATION_CASES[case]
    op = formula_op(
        "probe",
        2,
        value=lambda m, x, w: x * w,
        grads=lambda m, g, y, x, w: (g * f(m, x, w), g * x * f(m, x, w)),
    )
    assert op.second is not None
    rng = np.random.default_rng(sorted(DERIVATION_CASES).index(case))
    x, w = (rng.uniform(0.5, 2.0, (200, 1)) for _ in range(2))
    far = np.abs(x * x - w) > 0.01
    far &= np.abs(x - w) > 0.01
    x, w = x[far][:, None], w[far][:, None]
    h = 1e-5

    def first(x, w):
        return op.backward(np.ones_like(x), op.forward(x, w), x, w)

    dx = [(p - m) / (2 * h) for p, m in zip(first(x + h, w), first(x - h, w), strict=True)]
    dw = [(p - m) / (2 * h) for p, m in zip(first(x, w + h), first(x, w - h), strict=True)]
    got = op.second(op.forward(x, w), x, w)
    # (i, j) pairs in row-major order with i <= j: d2/dx2, d2/dx dw, d2/dw2
    for derived, finite in zip(got, (dx[0], dw[0], dw[1]), strict=True):
        np.testing.assert_allclose(derived, finite, rtol=1e-6, atol=1e-6, err_msg=case)
