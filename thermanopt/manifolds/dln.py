"""The maps of the deep linear network (DLN): end-to-end product, its derivatives, balanced lift.

A stack W of shape (..., N, d, d) (``depth`` N, ``width`` d, W[0] the first layer) has
the end-to-end matrix (the observable; Menon & Yu, arXiv 2509.09088)

    phi(W) = W[N-1] @ ... @ W[0] = X.

With L_p = W[N-1] ... W[p+1] and R_p = W[p-1] ... W[0] (so X = L_p W[p] R_p):

- differential:  dphi_W(V) = sum_p L_p V[p] R_p;
- adjoint:       (dphi_W^* G)_p = L_p^T G R_p^T  (the Euclidean gradient of f(phi(W)) when
  G = nabla f(X));
- its derivative along V for fixed G:
  (D_V dphi^* G)_p = dL_p^T G R_p^T + L_p^T G dR_p^T, with dL_p, dR_p the directional
  derivatives of the suffix and prefix products. The Euclidean Hessian of f o phi is then
  Hess(f o phi)(W) V = dphi^*(Hess f(X) dphi V) + (D_V dphi^*)(nabla f(X)).

A stack is balanced when W[p+1]^T W[p+1] = W[p] W[p]^T (p = 0..N-2); every balanced stack
over X = U diag(s) V^T is W[p-1] = Q_p diag(s^(1/N)) Q_{p-1}^T with Q_0 = V, Q_N = U and
free frames Q_1..Q_{N-1} in O(d) (:func:`balanced_from`).

Everything is batched over leading axes and keeps device and dtype.
"""

from __future__ import annotations

from typing import Any

from .._backend import device_of, matrix_transpose, namespace
from ._svd import SVD, svd

Array = Any

__all__ = [
    "end_to_end",
    "end_to_end_differential",
    "end_to_end_adjoint",
    "end_to_end_adjoint_derivative",
    "balanced_from",
    "balance_residual",
    "polar",
    "check_depth",
    "check_width_depth",
]


def check_depth(depth: Any) -> int:
    """``depth`` as an int; ``ValueError`` unless it is an integer >= 1 (not a bool)."""
    if isinstance(depth, bool):
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    try:
        N = int(depth)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}") from None
    if N < 1 or N != depth:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    return N


def check_width_depth(width: Any, depth: Any) -> tuple[int, int]:
    """(d, N) as ints; ``ValueError`` unless both are integers >= 1."""
    try:
        d = check_depth(width)
    except ValueError:
        raise ValueError(f"width must be an integer >= 1, got {width!r}") from None
    return d, check_depth(depth)


def _check_stack(W: Array) -> None:
    if len(W.shape) < 3 or W.shape[-1] != W.shape[-2]:
        raise ValueError(f"a stack of layers has shape (..., depth, d, d), got {tuple(W.shape)}")


def end_to_end(W: Array) -> Array:
    """phi(W) = W[N-1] @ ... @ W[0] for a stack W of shape (..., N, d, d)."""
    _check_stack(W)
    X = W[..., 0, :, :]
    for p in range(1, W.shape[-3]):
        X = W[..., p, :, :] @ X
    return X


def _prefix_suffix(W: Array) -> tuple[list[Array], list[Array]]:
    """R[p] = W[p-1] ... W[0] and L[p] = W[N-1] ... W[p+1] (identity at the ends)."""
    xp = namespace(W)
    N, d = W.shape[-3], W.shape[-1]
    eye = xp.zeros_like(W[..., 0, :, :]) + xp.eye(d, dtype=W.dtype, device=device_of(W))
    R = [eye]
    for p in range(1, N):
        R.append(W[..., p - 1, :, :] @ R[-1])
    L = [eye] * N
    for p in range(N - 2, -1, -1):
        L[p] = L[p + 1] @ W[..., p + 1, :, :]
    return L, R



def end_to_end_differential(W: Array, V: Array) -> Array:
    """dphi_W(V) = sum_p L_p V[p] R_p (shape (..., d, d))."""
    _check_stack(W)
    namespace(W, V)
    L, R = _prefix_suffix(W)
    out = L[0] @ V[..., 0, :, :] @ R[0]
    for p in range(1, W.shape[-3]):
        out = out + L[p] @ V[..., p, :, :] @ R[p]
    return out


def end_to_end_adjoint(W: Array, G: Array) -> Array:
    """(dphi_W^* G)_p = L_p^T G R_p^T: the gradient in W of f(phi(W)) for G = nabla f(X)."""
    _check_stack(W)
    xp = namespace(W, G)
    L, R = _prefix_suffix(W)
    mT = matrix_transpose
    return xp.stack([mT(L[p]) @ G @ mT(R[p]) for p in range(W.shape[-3])], axis=-3)


def end_to_end_adjoint_derivative(W: Array, V: Array, G: Array) -> Array:
    """D_V dphi_W^* G: derivative of the adjoint along V for fixed G.

    Layer p: dL_p^T G R_p^T + L_p^T G dR_p^T, with dR_p = sum_{q<p} W[p-1]..V[q]..W[0] and
    dL_p likewise (the product rule on the prefix and suffix products).
    """
    _check_stack(W)
    xp = namespace(W, V, G)
    N = W.shape[-3]
    L, R = _prefix_suffix(W)
    zero = xp.zeros_like(W[..., 0, :, :])
    dR = [zero]
    for p in range(1, N):
        dR.append(V[..., p - 1, :, :] @ R[p - 1] + W[..., p - 1, :, :] @ dR[p - 1])
    dL = [zero] * N
    for p in range(N - 2, -1, -1):
        dL[p] = dL[p + 1] @ W[..., p + 1, :, :] + L[p + 1] @ V[..., p + 1, :, :]
    mT = matrix_transpose
    parts = [mT(dL[p]) @ G @ mT(R[p]) + mT(L[p]) @ G @ mT(dR[p]) for p in range(N)]
    return xp.stack(parts, axis=-3)


def balance_residual(W: Array) -> Array:
    """h(W)[p] = W[p+1]^T W[p+1] - W[p] W[p]^T, p = 0..N-2 (shape (..., N-1, d, d)).

    Zero exactly on balanced stacks (Arora et al. 2018; Menon & Yu, arXiv 2509.09088).
    """
    hi, lo = W[..., 1:, :, :], W[..., :-1, :, :]
    return matrix_transpose(hi) @ hi - lo @ matrix_transpose(lo)


def polar(A: Array) -> Array:
    """Orthogonal polar factor U V^T of A = U diag(s) V^T (batched over leading axes)."""
    f = svd(A)
    return f.U @ matrix_transpose(f.V)


def svd_of(X_or_svd: Any) -> SVD:
    """The SVD of X, or X itself when it already is an :class:`SVD` (or a (U, s, V) tuple)."""
    if isinstance(X_or_svd, SVD):
        return X_or_svd
    if isinstance(X_or_svd, tuple) and len(X_or_svd) == 3:
        return SVD(*X_or_svd)
    return svd(X_or_svd)


def balanced_from(
    X_or_svd: Array | SVD, frames: Array | None = None, depth: int | None = None
) -> Array:
    """The balanced stack over X: W[p-1] = Q_p diag(s^(1/N)) Q_{p-1}^T, p = 1..N.

    Q_0 = V and Q_N = U come from X = U diag(s) V^T (pass an :class:`SVD` to fix them);
    ``frames`` holds Q_1..Q_{N-1} (shape (..., N-1, d, d), orthogonal; default the
    identity, then ``depth`` is required). end_to_end(W) = X and W is balanced.
    """
    f = svd_of(X_or_svd)
    xp = namespace(f.U)
    if frames is None:
        if depth is None:
            raise ValueError("balanced_from needs depth when frames is None")
        N = check_depth(depth)
        eye = xp.zeros_like(f.U) + xp.eye(f.s.shape[-1], dtype=f.U.dtype, device=device_of(f.U))
        Q = [f.V] + [eye] * (N - 1) + [f.U]
    else:
        namespace(f.U, frames)
        if len(frames.shape) < 3 or frames.shape[-1] != frames.shape[-2]:
            raise ValueError(f"frames must have shape (..., depth-1, d, d), got {frames.shape}")
        N = frames.shape[-3] + 1
        if depth is not None and check_depth(depth) != N:
            raise ValueError(f"frames hold {N - 1} frames but depth={depth} needs {depth - 1}")
        Q = [f.V] + [frames[..., p, :, :] for p in range(N - 1)] + [f.U]
    lam = xp.exp(xp.log(f.s) / N)
    mT = matrix_transpose
    layers = [(Q[p] * lam[..., None, :]) @ mT(Q[p - 1]) for p in range(1, N + 1)]
    return xp.stack(layers, axis=-3)
