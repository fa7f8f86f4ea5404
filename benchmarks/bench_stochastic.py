"""Step time of RiemannianSGD / RiemannianAdam against torch.optim.SGD / Adam.

Task: deep-linear-network regression, n = 8 width samples, minibatch 512,
width d and depth N (default 256 and 4). Euclidean baselines train the N
unconstrained factors W with torch.optim; the Riemannian optimizers train the
end-to-end matrix X on the observable quotient (GL(d), g_N) (the metric makes
their gradient flow the image of the factor gradient flow) through the quotient's
second-order retraction and the step rule, and, for reference, RiemannianSGD on the
balanced manifold itself. One step is
sample a batch + loss + gradient + update. Prints a table of ms/step and the
ratio to the matching torch optimizer (target: <= 1.5 on CPU at d = 256, N = 4).

    python benchmarks/bench_stochastic.py [--quick] [--device cuda] [--width 256] [--depth 4]
        [--json PATH]

The rows (time per step, ratio to the matching torch optimizer) go through ``_report.emit``.
"""

from __future__ import annotations

import argparse
import time

import torch
from _report import add_common_arguments, emit  # noqa: E402

from thermanopt.manifolds import BalancedManifold, ObservableQuotient, balanced_from, end_to_end
from thermanopt.optimizers import RiemannianAdam, RiemannianSGD, StochasticProblem


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(d, n, device, dtype, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, d, generator=g, device=device, dtype=dtype)
    Xs = (
        torch.eye(d, device=device, dtype=dtype)
        + 0.3 * torch.randn(d, d, generator=g, device=device, dtype=dtype) / d**0.5
    )
    y = x @ Xs.mT

    def loss(X, batch):
        r = x[batch] @ X.mT - y[batch]
        return 0.5 * (r * r).sum(-1).mean()

    return loss


def time_torch(opt_name, W0, loss, n, batch, steps, warmup, lr, device):
    W = W0.clone().requires_grad_(True)
    opt = (torch.optim.Adam if opt_name == "adam" else torch.optim.SGD)([W], lr=lr)
    g = torch.Generator(device=device).manual_seed(1)
    t0 = None
    for k in range(warmup + steps):
        if k == warmup:
            _sync(device)
            t0 = time.perf_counter()
        idx = torch.randint(0, n, (batch,), generator=g, device=device)
        opt.zero_grad(set_to_none=True)
        loss(end_to_end(W), idx).backward()
        opt.step()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def time_riemannian(opt_cls, manifold, x0, cost, n, batch, steps, warmup, lr, device, **kw):
    problem = StochasticProblem(manifold, cost, n, batch, sampling="replacement")
    marks = {}

    def callback(k, x, record):
        if k + 1 in (warmup, warmup + steps):
            _sync(device)
            marks[k + 1] = time.perf_counter()
        return k + 1 >= warmup + steps

    opt_cls(lr, max_iterations=warmup + steps + 1, generator=1, **kw).run(
        problem, initial_point=x0, callback=callback
    )
    return (marks[warmup + steps] - marks[warmup]) / steps


def main(argv=None):
    ap = add_common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--no-balanced", action="store_true", help="skip the balanced-manifold row")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    d = args.width or (64 if args.quick else 256)
    N = args.depth
    steps = args.steps or (10 if args.quick else 30)
    warmup = 3
    n, batch = 8 * d, min(512, 8 * d)
    loss = make_data(d, n, device, dtype)
    X0 = torch.eye(d, device=device, dtype=dtype)
    W0 = balanced_from(X0, None, N)
    quotient = ObservableQuotient(d, N, backend="torch", device=device, dtype=dtype)
    lr_sgd, lr_adam = 1e-2, 1e-3

    rows = []
    t_sgd = time_torch("sgd", W0, loss, n, batch, steps, warmup, lr_sgd, device)
    t_adam = time_torch("adam", W0, loss, n, batch, steps, warmup, lr_adam, device)
    rows.append(("torch.optim.SGD (factors)", t_sgd, 1.0))
    rows.append(("torch.optim.Adam (factors)", t_adam, 1.0))
    for label, cls, lr, base, kw in [
        ("RiemannianSGD quotient", RiemannianSGD, lr_sgd, t_sgd, {}),
        ("RiemannianAdam quotient", RiemannianAdam, lr_adam, t_adam, {"adaptivity": "elementwise"}),
    ]:
        t = time_riemannian(cls, quotient, X0, loss, n, batch, steps, warmup, lr, device, **kw)
        rows.append((label, t, t / base))
    if not args.no_balanced:
        bal = BalancedManifold(d, N, backend="torch", device=device, dtype=dtype)

        def cost_w(W, b):
            return loss(end_to_end(W), b)

        t = time_riemannian(
            RiemannianSGD, bal, W0, cost_w, n, batch, max(3, steps // 3), 2, lr_sgd, device
        )
        rows.append(("RiemannianSGD balanced manifold", t, t / t_sgd))
    print(
        f"width {d}, depth {N}, batch {batch}, {args.dtype}, device {device}, "
        f"threads {torch.get_num_threads()}, {steps} timed steps"
    )
    print(f"{'optimizer':40s} {'ms/step':>10s} {'ratio':>8s}")
    for label, t, r in rows:
        print(f"{label:40s} {1e3 * t:10.2f} {r:8.2f}")
    print()
    where = f"{args.dtype} {device.type}, batch {batch}"
    out = []
    for label, t, r in rows:
        if label.startswith("torch.optim"):
            note = f"baseline, {where}"
        elif "balanced" in label:
            note = f"time / torch.optim.SGD step, {where} (reference, no target)"
        else:
            base = "Adam" if "Adam" in label else "SGD"
            note = f"time / torch.optim.{base} step, {where} (target <= 1.5 at d=256 N=4)"
        out.append(
            {"benchmark": label, "size": f"d={d} N={N}", "time_s": t, "ratio": r, "note": note}
        )
    return emit(out, args.json, title="summary (time_s per step)")


if __name__ == "__main__":
    main()
