"""Property-based bad-input tests: malformed arguments get a finite answer or a named error.

Hypothesis throws wrong shapes, NaN/inf, huge entries, singular and unbalanced points, wrong
dtypes, wrong array types, bad option values and bad widths/depths at the public functions of
``thermanopt.manifolds`` (both DLN manifolds), ``thermanopt.entropy`` (``EntropyModel``,
``free_energy``) and ``thermanopt.optimizers`` (constructors, ``run`` and ``sample``). Each
call must either return a finite result (a bool for predicates) or raise ``ValueError`` /
``TypeError`` with a one-line message; ``LinAlgError``, ``IndexError``, ``KeyError``,
``RuntimeError`` (torch's errors), a NaN/inf result or a hang fail the test.

The pure bundle maps (``end_to_end`` and its derivatives, ``from_balanced``, ``pull_back``)
check shapes and dtypes only: they run inside autodiff traces and ``torch.func.vmap``, where
a check of values is impossible, and propagate a NaN like a matrix product does. For them a
non-finite result is accepted exactly when an argument was non-finite or huge.
"""

from __future__ import annotations

import math

import numpy as np
import pymanopt
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import thermanopt.function
from thermanopt.entropy import EntropyModel, free_energy
from thermanopt.manifolds import SVD, BalancedManifold, ObservableQuotient
from thermanopt.optimizers import (
    FreeEnergyDescent,
    RiemannianAdam,
    RiemannianLangevin,
    RiemannianSGD,
    StochasticProblem,
)

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

ALLOWED = (ValueError, TypeError)
PURE = {
    "end_to_end",
    "end_to_end_differential",
    "end_to_end_adjoint",
    "end_to_end_adjoint_derivative",
    "from_balanced",
    "pull_back",
    "to_balanced_W",  # BalancedManifold.to_balanced is the identity
    "zero_vector",
}
PREDICATES = {"is_on_manifold", "regular"}

# ------------------------------------------------------------------ outcomes


def _finite(x) -> bool:
    if x is None:
        return True
    if isinstance(x, (bool, np.bool_)):
        return True
    if isinstance(x, (int, float, np.floating, np.integer)):
        return math.isfinite(float(x))
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x).all()) if x.dtype.is_floating_point else True
    if isinstance(x, np.ndarray):
        return bool(np.isfinite(x).all()) if np.issubdtype(x.dtype, np.floating) else True
    if isinstance(x, (tuple, list)):
        return all(_finite(v) for v in x)
    point = getattr(x, "point", None)  # OptimizerResult
    if point is not None:
        return _finite(point) and _finite(getattr(x, "cost", 0.0))
    return True


def _outcome(fn, *, may_propagate: bool = False):
    """Call ``fn``; a finite result or a one-line ValueError/TypeError passes."""
    try:
        out = fn()
    except ALLOWED as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, f"message must be one line: {msg!r}"
        return exc
    if not may_propagate:
        assert _finite(out), f"non-finite result {out!r}"
    return out


# ------------------------------------------------------------------ malformed arrays

CORRUPTIONS = [
    "none",
    "nan",
    "inf",
    "huge",
    "zero",
    "drop_axis",
    "extra_axis",
    "wrong_width",
    "float16",
    "int64",
    "complex",
    "float32",
    "list",
    "scalar",
    "other_backend",
]


def _like(x, arr):
    """``arr`` (NumPy) in the array type / dtype of ``x``."""
    if isinstance(x, torch.Tensor):
        return torch.as_tensor(arr, dtype=x.dtype)
    return np.asarray(arr, dtype=x.dtype)


def _np(x):
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def corrupt(x, how: str, index: int = 0):
    """A malformed version of the array ``x`` (returns the value and whether it is 'non-finite
    or huge', for which pure maps may propagate)."""
    a = _np(x).copy()
    flat = a.reshape(-1)
    if how == "none":
        return x, False
    if how in ("nan", "inf", "huge"):
        flat[index % flat.size] = {"nan": np.nan, "inf": -np.inf, "huge": 1e200}[how]
        return _like(x, a), True
    if how == "zero":
        return _like(x, np.zeros_like(a)), False
    if how == "drop_axis":
        return _like(x, a[0]), False
    if how == "extra_axis":
        return _like(x, np.stack([a, a])), False
    if how == "wrong_width":
        return _like(x, np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, 1)])), False
    if how == "float16":
        return (
            torch.as_tensor(a, dtype=torch.float16)
            if isinstance(x, torch.Tensor)
            else a.astype(np.float16)
        ), False
    if how == "int64":
        return (
            torch.as_tensor(a).long() if isinstance(x, torch.Tensor) else a.astype(np.int64)
        ), False
    if how == "complex":
        return (
            torch.as_tensor(a.astype(np.complex128))
            if isinstance(x, torch.Tensor)
            else a.astype(np.complex128)
        ), False
    if how == "float32":
        return (
            torch.as_tensor(a, dtype=torch.float32)
            if isinstance(x, torch.Tensor)
            else a.astype(np.float32)
        ), False
    if how == "list":
        return a.tolist(), False
    if how == "scalar":
        return 1.0, False
    if how == "other_backend":
        return (a if isinstance(x, torch.Tensor) else torch.as_tensor(a)), False
    raise AssertionError(how)


# ------------------------------------------------------------------ manifolds and arguments


def make_manifold(kind: str, width: int, depth: int, backend: str):
    cls = BalancedManifold if kind == "balanced" else ObservableQuotient
    return cls(width, depth, backend=backend)


def _special_point(M, how: str, seed: int):
    """Singular or unbalanced points (values only; shapes stay right)."""
    d, N = M.width, M.depth
    rng = np.random.default_rng(seed)
    s = np.exp(rng.standard_normal(d) * 0.3)
    s[-1] = 0.0 if how == "singular" else s[-1]
    U, _ = np.linalg.qr(rng.standard_normal((d, d)))
    V, _ = np.linalg.qr(rng.standard_normal((d, d)))
    X = (U * s) @ V.T
    spec = M.spec
    if isinstance(M, ObservableQuotient):
        return spec.asarray(X)
    W = (
        M.balanced_from(SVD(spec.asarray(U), spec.asarray(s), spec.asarray(V)))
        if (how == "singular")
        else M.random_point(seed)
    )
    if how == "unbalanced" and N > 1:
        W = W * 1
        W[0] = 2.0 * W[0]
    return W


def arguments(M, seed: int) -> dict:
    """Good arguments of every public method: name -> (method name, list of (arg, value))."""
    d, N = M.width, M.depth
    x = M.random_point(seed)
    y = M.random_point(seed + 1)
    v = M.random_tangent_vector(x, seed + 2)
    e = M.spec.randn(tuple(x.shape), seed + 3)
    G = M.spec.randn((d, d), seed + 4)
    if isinstance(M, BalancedManifold):
        Om = M.spec.randn((N - 1, d, d), seed + 5)
        Om = Om - (Om.mT if isinstance(Om, torch.Tensor) else np.swapaxes(Om, -1, -2))
        R = (
            np.stack(
                [
                    np.linalg.qr(np.random.default_rng(seed + i).standard_normal((d, d)))[0]
                    for i in range(N - 1)
                ]
            )
            if N > 1
            else np.zeros((0, d, d))
        )
        R = M.spec.asarray(R)
        X = M.end_to_end(x)
        calls = {
            "balanced_from": [("X", X)],
            "frames": [("W", x)],
            "horizontal_lift": [("W", x), ("Z", G)],
            "horizontal_part": [("W", x), ("V", e)],
            "vertical_part": [("W", x), ("V", e)],
            "normal_part": [("W", x), ("V", e)],
            "vertical_vector": [("W", x), ("Omega", Om)],
            "orbit_action": [("W", x), ("R", R)],
            "weingarten": [("point", x), ("tangent_vector", v), ("normal_vector", e)],
            "end_to_end_adjoint": [("point", x), ("covector", G)],
            "end_to_end_adjoint_derivative": [("point", x), ("vector", v), ("covector", G)],
            "to_balanced_W": [("point", x)],
            "from_balanced": [("W", x)],
            "pull_back": [("W", x), ("covector", e)],
        }
    else:
        W = M.to_balanced(x)
        calls = {
            "metric": [("point", x), ("tangent_vector", v)],
            "metric_inverse": [("point", x), ("covector", e)],
            "christoffel": [("point", x), ("tangent_vector_a", v), ("tangent_vector_b", e)],
            "to_balanced": [("point", x)],
            "end_to_end_adjoint": [("point", x), ("covector", e)],
            "end_to_end_adjoint_derivative": [("point", x), ("vector", v), ("covector", e)],
            "from_balanced": [("W", W)],
            "pull_back": [("W", W), ("covector", G)],
        }
    calls.update(
        {
            "inner_product": [("point", x), ("a", v), ("b", e)],
            "norm": [("point", x), ("tangent_vector", v)],
            "projection": [("point", x), ("vector", e)],
            "to_tangent_space": [("point", x), ("vector", e)],
            "euclidean_to_riemannian_gradient": [("point", x), ("egrad", e)],
            "euclidean_to_riemannian_hessian": [
                ("point", x),
                ("egrad", e),
                ("ehess", e * 0.5),
                ("tangent_vector", v),
            ],
            "retraction": [("point", x), ("tangent_vector", v)],
            "retraction_second_order": [("point", x), ("tangent_vector", v)],
            "retraction_first_order": [("point", x), ("tangent_vector", v)],
            "transport": [("point_a", x), ("point_b", y), ("tangent_vector", v)],
            "end_to_end": [("point", x)],
            "end_to_end_differential": [("point", x), ("tangent_vector", v)],
            "reproject": [("point", x)],
            "zero_vector": [("point", x)],
            "random_tangent_vector": [("point", x)],
            "check_point": [("point", x)],
            "is_on_manifold": [("point", x)],
            "regular": [("points", x)],
        }
    )
    return calls


def _call(M, name: str, args: list):
    method = "to_balanced" if name == "to_balanced_W" else name
    return getattr(M, method)(*[a for _, a in args])


manifold_cases = st.tuples(
    st.sampled_from(["balanced", "quotient"]),
    st.integers(1, 3),
    st.integers(1, 3),
    st.sampled_from(["numpy", "torch"]),
    st.integers(0, 2**16),
)


@settings(SETTINGS, max_examples=150)
@given(case=manifold_cases, data=st.data())
def test_manifold_methods_reject_malformed_arrays(case, data):
    kind, width, depth, backend, seed = case
    M = make_manifold(kind, width, depth, backend)
    calls = arguments(M, seed)
    name = data.draw(st.sampled_from(sorted(calls)), label="method")
    args = list(calls[name])
    i = data.draw(st.integers(0, len(args) - 1), label="argument")
    how = data.draw(st.sampled_from(CORRUPTIONS), label="corruption")
    entry = data.draw(st.integers(0, 10**6), label="entry")
    bad, propagating = corrupt(args[i][1], how, entry)
    args[i] = (args[i][0], bad)
    out = _outcome(lambda: _call(M, name, args), may_propagate=propagating and name in PURE)
    if name in PREDICATES and not isinstance(out, Exception):
        assert out is not None


@settings(SETTINGS, max_examples=80)
@given(case=manifold_cases, data=st.data())
def test_manifold_methods_reject_singular_and_unbalanced_points(case, data):
    kind, width, depth, backend, seed = case
    M = make_manifold(kind, width, depth, backend)
    how = data.draw(st.sampled_from(["singular", "unbalanced"]), label="point")
    bad = _special_point(M, how, seed)
    calls = arguments(M, seed)
    name = data.draw(st.sampled_from(sorted(calls)), label="method")
    args = list(calls[name])
    if name in ("balanced_from",):
        args[0] = ("X", M.end_to_end(bad))
    else:
        args[0] = (args[0][0], bad)
    out = _outcome(lambda: _call(M, name, args))
    if isinstance(out, Exception) or name in PURE | PREDICATES | {"check_point", "to_balanced"}:
        return
    # a geometry method that accepted the point: the point must have been a fine one
    # (unbalanced at depth 1 is balanced), or the method is a formula valid at every stack
    # (the Frobenius inner product of the balanced manifold, the orbit action and its
    # generators)
    assert (
        how == "unbalanced"
        and (depth == 1 or kind == "quotient")
        or (
            kind == "balanced"
            and name in {"inner_product", "norm", "vertical_vector", "orbit_action"}
        )
    ), f"{name} accepted a {how} point"


@settings(SETTINGS, max_examples=60)
@given(
    kind=st.sampled_from(["balanced", "quotient"]),
    width=st.one_of(
        st.integers(-2, 4),
        st.sampled_from([None, math.nan, math.inf, 2.5, "3", True, [2], 1e30]),
    ),
    depth=st.one_of(
        st.integers(-2, 4), st.sampled_from([None, math.nan, -math.inf, 1.5, "2", False])
    ),
)
def test_constructors_reject_bad_width_and_depth(kind, width, depth):
    cls = BalancedManifold if kind == "balanced" else ObservableQuotient
    M = _outcome(lambda: cls(width, depth))
    if not isinstance(M, Exception):
        assert (M.width, M.depth) == (width, depth)
        M.check_point(M.random_point(0))


@settings(SETTINGS, max_examples=100)
@given(
    kind=st.sampled_from(["balanced", "quotient"]),
    backend=st.sampled_from(["numpy", "torch", "jax", None, 3]),
    device=st.sampled_from([None, "cpu", "cuda", "cuda:7", "tpu", 3.5]),
    dtype=st.sampled_from(
        [
            None,
            np.float32,
            "float64",
            np.float16,
            "bfloat16",
            torch.float16,
            torch.bfloat16,
            np.int64,
            np.complex128,
            "nonsense",
            torch.float64,
        ]
    ),
    generator=st.sampled_from(
        [None, 0, -1, "abc", 1.5, np.random.default_rng(0), [1, 2], torch.Generator()]
    ),
    component=st.sampled_from([1, -1, 0, 2, True, None, "x"]),
)
def test_constructors_and_random_points(kind, backend, device, dtype, generator, component):
    cls = BalancedManifold if kind == "balanced" else ObservableQuotient
    M = _outcome(lambda: cls(3, 2, backend=backend, device=device, dtype=dtype))
    if isinstance(M, Exception):
        return
    x = _outcome(lambda: M.random_point(generator, component))
    if not isinstance(x, Exception):
        M.check_point(x)


def test_retraction_overflow_is_an_error_and_the_step_rule_rescues_it():
    Q = ObservableQuotient(3, 3)
    X = Q.random_point(0)
    with pytest.raises(ValueError, match="shorter step"):
        Q.retraction(X, 1e200 * X)
    with Q.unchecked():
        assert not np.isfinite(Q.retraction(X, 1e200 * X)).all()
    from thermanopt.manifolds.step import StepRule

    rule = StepRule(max_halvings=2000)
    Y = rule(Q, X, 1e200 * X)
    assert np.isfinite(Y).all() and rule.rescues == 1


# ------------------------------------------------------------------ entropy


@settings(SETTINGS, max_examples=100)
@given(case=manifold_cases, data=st.data())
def test_entropy_model_rejects_bad_points(case, data):
    kind, width, depth, backend, seed = case
    M = make_manifold(kind, width, depth, backend)
    model = EntropyModel(M)
    x = M.random_point(seed)
    v = M.random_tangent_vector(x, seed + 1)
    which = data.draw(st.sampled_from(["x", "v"]), label="argument")
    how = data.draw(st.sampled_from(CORRUPTIONS + ["singular"]), label="corruption")
    if how == "singular":
        bad = _special_point(M, "singular", seed)
    else:
        bad = corrupt(x if which == "x" else v, how, data.draw(st.integers(0, 999)))[0]
    xx, vv = (bad, v) if which == "x" or how == "singular" else (x, bad)
    method = data.draw(
        st.sampled_from(
            ["value", "value_or_minus_inf", "euclidean_gradient", "riemannian_gradient", "hvp"]
        ),
        label="method",
    )
    if method == "hvp":
        _outcome(lambda: model.euclidean_hvp(xx, vv))
    elif method == "value_or_minus_inf":
        # by contract -inf where two singular values vanish (a singular or zero point)
        out = _outcome(lambda: model.value_or_minus_inf(xx), may_propagate=True)
        assert isinstance(out, Exception) or out == -math.inf or math.isfinite(out)
    else:
        _outcome(lambda: getattr(model, method)(xx))


@SETTINGS
@given(
    depth=st.sampled_from([None, 0, -1, 2, 2.5, math.nan, "2", True]),
    temperature=st.sampled_from([0.0, 0.5, -1.0, math.nan, math.inf, None, "hot", 1e300]),
    manifold_kind=st.sampled_from(["quotient", "balanced", "euclidean", "none", "object"]),
    cost_kind=st.sampled_from(["autograd", "problem", "callable", "none"]),
)
def test_free_energy_and_entropy_model_options(depth, temperature, manifold_kind, cost_kind):
    M = {
        "quotient": ObservableQuotient(2, 2),
        "balanced": BalancedManifold(2, 2),
        "euclidean": pymanopt.manifolds.Euclidean(2, 2),
        "none": None,
        "object": object(),
    }[manifold_kind]
    _outcome(lambda: EntropyModel(M, depth))
    base = M if manifold_kind in ("quotient", "balanced", "euclidean") else ObservableQuotient(2, 2)

    def energy(x):
        return (x**2).sum()

    decorated = pymanopt.function.autograd(base)(energy)
    cost = {
        "autograd": decorated,
        "problem": pymanopt.Problem(base, decorated),
        "callable": energy,
        "none": None,
    }[cost_kind]
    problem = _outcome(lambda: free_energy(cost, M, temperature, depth=depth))
    if isinstance(problem, Exception):
        return
    x = base.random_point() if manifold_kind != "balanced" else M.random_point(0)
    _outcome(lambda: problem.cost(x))


# ------------------------------------------------------------------ optimizers


def _problems(M, backend_of_cost: str):
    target = np.diag(np.linspace(1.5, 0.5, M.width))

    if backend_of_cost == "torch":
        tt = torch.as_tensor(target)

        @thermanopt.function.torch(M)
        def cost(x):
            return 0.5 * ((M.end_to_end(x) - tt.to(x.dtype)) ** 2).sum()

    else:

        @pymanopt.function.autograd(M)
        def cost(x):
            return 0.5 * ((M.end_to_end(x) - target) ** 2).sum()

    return pymanopt.Problem(M, cost)


OPTIMIZER_OPTIONS = st.sampled_from(
    [
        {},
        {"temperature": -1.0},
        {"temperature": math.nan},
        {"temperature": None},
        {"step_size": 0.0},
        {"step_size": math.inf},
        {"step_size": "big"},
        {"max_halvings": None},
        {"max_halvings": -1},
        {"check_every": 0},
        {"check_every": 2.5},
        {"momentum": 1.0},
        {"momentum": math.nan},
        {"betas": (1.0, 0.5)},
        {"betas": "ab"},
        {"eps": 0.0},
        {"adaptivity": "entrywise"},
        {"entropy_weight": -1.0},
        {"max_iterations": -3},
    ]
)


def _construct(kind: str, options: dict):
    if kind == "fed":
        keep = {k: v for k, v in options.items() if k in ("temperature", "max_iterations")}
        keep.setdefault("max_iterations", 3)
        return FreeEnergyDescent(**keep)
    if kind == "langevin":
        opts = {"temperature": 0.1, "step_size": 1e-3, **options}
        keep = {
            k: v
            for k, v in opts.items()
            if k in ("temperature", "step_size", "entropy_weight", "max_halvings", "check_every")
        }
        return RiemannianLangevin(**keep)
    cls = RiemannianSGD if kind == "sgd" else RiemannianAdam
    keep = {
        k: v
        for k, v in options.items()
        if k in ("temperature", "step_size", "max_halvings", "check_every", "max_iterations")
        or (kind == "sgd" and k == "momentum")
        or (kind == "adam" and k in ("betas", "eps", "adaptivity"))
    }
    keep.setdefault("max_iterations", 3)
    keep.setdefault("step_size", 1e-2)
    return cls(**keep)


@settings(SETTINGS, max_examples=80)
@given(
    kind=st.sampled_from(["fed", "sgd", "adam", "langevin"]),
    manifold_kind=st.sampled_from(["balanced", "quotient"]),
    manifold_backend=st.sampled_from(["numpy", "torch"]),
    cost_backend=st.sampled_from(["autograd", "torch"]),
    options=OPTIMIZER_OPTIONS,
    start=st.sampled_from(
        [
            "good",
            "nan",
            "singular",
            "unbalanced",
            "float16",
            "other_backend",
            "list",
            "drop_axis",
            "huge",
        ]
    ),
    n_steps=st.sampled_from([3, 0, -1, 2.5, math.nan, None]),
)
def test_optimizers_reject_bad_options_and_starts(
    kind, manifold_kind, manifold_backend, cost_backend, options, start, n_steps
):
    if cost_backend == "autograd" and manifold_backend == "torch" and start == "good":
        start = "other_backend"  # a NumPy start on a torch manifold: the mismatch
    M = make_manifold(manifold_kind, 2, 2, manifold_backend)
    problem = _outcome(lambda: _problems(M, cost_backend))
    if isinstance(problem, Exception):
        return
    opt = _outcome(lambda: _construct(kind, options))
    if isinstance(opt, Exception):
        return
    x0 = M.random_point(0)
    if start in ("singular", "unbalanced"):
        x0 = _special_point(M, start, 1)
    elif start != "good":
        x0 = corrupt(x0, start if start != "huge" else "huge", 1)[0]
    if kind == "langevin":
        _outcome(lambda: opt.sample(problem, x0, n_steps, n_chains=2, generator=0))
    else:
        _outcome(lambda: opt.run(problem, initial_point=x0))


def test_initial_point_errors_say_initial_point():
    Q = ObservableQuotient(3, 2)
    problem = pymanopt.Problem(Q, pymanopt.function.autograd(Q)(lambda X: (X**2).sum()))
    with pytest.raises(ValueError, match="initial point"):
        FreeEnergyDescent(0.1, max_iterations=2).run(problem, initial_point=np.diag([1.0, 1, 0]))
    with pytest.raises(ValueError, match="initial point"):
        RiemannianSGD(0.1, max_iterations=2).run(problem, initial_point=np.full((3, 3), np.nan))
    Qt = ObservableQuotient(3, 2, backend="torch")
    pt = pymanopt.Problem(Qt, pymanopt.function.autograd(Qt)(lambda X: (X**2).sum()))
    with pytest.raises(ValueError, match="torch tensor.*autograd"):
        FreeEnergyDescent(0.1, max_iterations=2).run(pt, initial_point=torch.eye(3).double())
    sp = StochasticProblem(Q, lambda X, b: (X**2).sum(), 1)
    with pytest.raises(ValueError, match="initial point"):
        RiemannianAdam(0.1, max_iterations=2).run(sp, initial_point=np.diag([1.0, 1, 0]))
    with pytest.raises(ValueError, match="initial point"):
        RiemannianLangevin(0.1, 1e-3).sample(problem, np.diag([1.0, 1, 0]), 2)


# ------------------------------------------------------------------ the issue's examples


def _unbalanced(M):
    W = M.random_point(0) * 1
    W[0] = 2.0 * W[0]
    return W


_B = BalancedManifold(3, 3)
_W = _B.random_point(0)
_V = _B.random_tangent_vector(_W, 1)
_Q = ObservableQuotient(3, 3)
_X = _Q.random_point(0)
_S = np.diag([1.0, 1.0, 0.0])

ISSUE_EXAMPLES = {
    "projection broadcasts a (3, 3) vector": (lambda: _B.projection(_W, _V[0]), "shape"),
    "projection at an unbalanced stack": (lambda: _B.projection(_unbalanced(_B), _V), "balanced"),
    "a (3, 3) stack": (lambda: _B.projection(_W[0], _V[0]), "shape"),
    "a (2, 3, 3) stack": (lambda: _B.horizontal_part(_W[:2], _V[:2]), "shape"),
    "vertical_part of a (3, 3) vector": (lambda: _B.vertical_part(_W, _V[0]), "shape"),
    "NaN quotient point": (lambda: _Q.inner_product(_X * np.nan, _X, _X), "NaN"),
    "singular quotient point": (lambda: _Q.inner_product(_S, _X, _X), "rank"),
    "singular gradient": (lambda: _Q.euclidean_to_riemannian_gradient(_S, _X), "rank"),
    "singular first-order retraction": (lambda: _Q.retraction_first_order(_S, _X), "rank"),
    "huge quotient step": (lambda: _Q.retraction(_X, 1e200 * _X), "shorter step"),
    "width NaN": (lambda: BalancedManifold(math.nan, 2), "width"),
    "width inf": (lambda: ObservableQuotient(math.inf, 2), "width"),
    "width None": (lambda: BalancedManifold(None, 2), "width"),
    "generator 'abc'": (lambda: _B.random_point(generator="abc"), "generator"),
    "float16": (lambda: BalancedManifold(3, 2, backend="torch", dtype=torch.float16), "float16"),
    "bfloat16 arrays": (
        lambda: _Q.projection(
            torch.eye(3, dtype=torch.bfloat16), torch.eye(3, dtype=torch.bfloat16)
        ),
        "bfloat16",
    ),
}
if not torch.cuda.is_available():
    ISSUE_EXAMPLES["cuda without CUDA"] = (
        lambda: BalancedManifold(3, 2, backend="torch", device="cuda"),
        "CUDA",
    )


@pytest.mark.parametrize("label", sorted(ISSUE_EXAMPLES))
def test_issue_examples_give_named_errors(label):
    fn, match = ISSUE_EXAMPLES[label]
    with pytest.raises((ValueError, TypeError), match=match) as info:
        fn()
    assert "\n" not in str(info.value)


def test_langevin_too_large_step_says_lower_the_step_size():
    M = BalancedManifold(3, 2)
    cost = pymanopt.function.autograd(M)(lambda W: ((W[1] @ W[0] - np.eye(3)) ** 2).sum())
    with pytest.raises(ValueError, match="step size"):
        RiemannianLangevin(1.0, 50.0).sample(
            pymanopt.Problem(M, cost), M.random_point(0), 20, n_chains=4, generator=0
        )
