"""The conformance kit passes on a correct manifold and catches broken ones."""

import pytest

from thermanopt.manifolds import Sphere
from thermanopt.testing import check_manifold


@pytest.mark.parametrize("seed", [0, 1])
def test_sphere_passes(backend_dtype, seed):
    backend, dtype = backend_dtype
    numbers = check_manifold(Sphere(6, backend=backend, dtype=dtype), generator=seed,
                             retraction_order=2)
    assert numbers["projection_rank"] == 5
    assert abs(numbers["gradient_slope"] - 2) < 0.3
    assert abs(numbers["hessian_slope_second_order"] - 3) < 0.3


class _WrongProjection(Sphere):
    def projection(self, point, vector):
        return vector - 0.5 * (point * vector).sum() * point

    to_tangent_space = projection


class _NoWeingarten(Sphere):
    def euclidean_to_riemannian_hessian(self, point, egrad, ehess, u):
        return self.projection(point, ehess)


class _WrongGradient(Sphere):
    def euclidean_to_riemannian_gradient(self, point, egrad):
        return 1.1 * self.projection(point, egrad)


class _NotARetraction(Sphere):
    def retraction(self, point, v):
        y = point + 2.0 * v
        return y / (y * y).sum() ** 0.5


class _WrongDim(Sphere):
    def __init__(self, n, **kw):
        super().__init__(n, **kw)
        self._dimension = n


@pytest.mark.parametrize(
    "cls, message",
    [
        (_WrongProjection, "projection"),
        (_NoWeingarten, "hessian"),
        (_WrongGradient, "gradient"),
        (_NotARetraction, "retraction"),
        (_WrongDim, "dim"),
    ],
)
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_broken_manifolds_fail(cls, message, backend):
    with pytest.raises(AssertionError, match=message):
        check_manifold(cls(5, backend=backend), generator=3, retraction_order=2)
