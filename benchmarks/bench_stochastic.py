"""Step time of RiemannianSGD / RiemannianAdam against the limit and against torch.optim.

Task: deep-linear-network regression, n = 8 width samples, minibatch 512, width d and
depth N (default 256 and 4). One step is sample a batch + loss + gradient + update.

- ``limit``: what no Riemannian step can avoid, the loss and its gradient at the point
  (torch autograd) plus one SVD of the end-to-end matrix X;
- ``torch.optim.SGD`` / ``Adam``: the Euclidean optimizers on the N free factors W;
- the Riemannian optimizers on the observable quotient (GL(d), g_N) (points X; the metric
  makes their gradient flow the image of the factor gradient flow) and on the balanced
  manifold (points W), each through its second-order retraction and the step rule;
- ``before`` rows (``--before REV``, default 26ab453, the revision before issue 12): the
  same optimizers and manifolds of that revision's package, loaded beside the current one
  (:mod:`_before`), in the same rounds.

Each round runs every row for a few steps from the same start; a step's time is the CPU
time of the process between two callbacks (wall clock on CUDA), a row's time in a round the
median over its steps. Printed ratios are medians over rounds of the per-round ratio to the
limit (target <= 1.5 on the CPU, float64, one thread, at d = 256, N = 4) and to the matching
torch optimizer (SGD rows to SGD, Adam rows to Adam).

    python benchmarks/bench_stochastic.py [--quick] [--device cuda] [--width 256] [--depth 4]
        [--dtype float64] [--threads 1] [--rounds R] [--steps S]
        [--before REV | --no-before] [--no-balanced] [--json PATH]

The rows (time per step, ratio to the limit) go through ``_report.emit``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _before import load_package, submodule  # noqa: E402
from _report import add_common_arguments, emit  # noqa: E402

import thermanopt.manifolds as current_manifolds
import thermanopt.optimizers as current_optimizers

BEFORE = "26ab453"


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


class Clock:
    """CPU time of the process on the CPU, wall clock (after a sync) on CUDA."""

    def __init__(self, device):
        self.device = device
        self.read = time.perf_counter if device.type == "cuda" else time.process_time

    def __call__(self):
        _sync(self.device)
        return self.read()


def time_limit(point, cost, end_to_end, n, batch, calls, clock):
    """Median time of: loss and gradient at the point (autograd) + one SVD of X."""
    g = torch.Generator(device=point.device).manual_seed(2)
    times = []
    for _ in range(calls + 1):
        idx = torch.randint(0, n, (batch,), generator=g, device=point.device)
        t0 = clock()
        p = point.detach().requires_grad_(True)
        cost(p, idx).backward()
        torch.linalg.svd(end_to_end(point.detach()), full_matrices=False)
        times.append(clock() - t0)
    return statistics.median(times[1:])


def time_torch(opt_name, W0, loss, end_to_end, n, batch, steps, lr, clock):
    """Median step time of torch.optim on the free factors."""
    W = W0.clone().requires_grad_(True)
    opt = (torch.optim.Adam if opt_name == "adam" else torch.optim.SGD)([W], lr=lr)
    g = torch.Generator(device=W0.device).manual_seed(1)
    times = []
    for _ in range(steps + 1):
        t0 = clock()
        idx = torch.randint(0, n, (batch,), generator=g, device=W0.device)
        opt.zero_grad(set_to_none=True)
        loss(end_to_end(W), idx).backward()
        opt.step()
        times.append(clock() - t0)
    return statistics.median(times[1:])


def time_riemannian(lib, opt_name, manifold, x0, cost, n, batch, steps, lr, clock):
    """Median step time (between callbacks, first step dropped) of a Riemannian optimizer."""
    opt = lib.optimizers
    problem = opt.StochasticProblem(manifold, cost, n, batch, sampling="replacement")
    marks = []

    def callback(k, x, record):
        marks.append(clock())
        return k + 1 >= steps + 1

    cls, kw = (
        (opt.RiemannianAdam, {"adaptivity": "elementwise"})
        if opt_name == "adam"
        else (opt.RiemannianSGD, {})
    )
    cls(lr, max_iterations=steps + 2, generator=1, **kw).run(
        problem, initial_point=x0, callback=callback
    )
    return statistics.median(b - a for a, b in zip(marks[:-1], marks[1:], strict=True))


class _Lib:
    def __init__(self, manifolds, optimizers):
        self.manifolds, self.optimizers = manifolds, optimizers


def main(argv=None):
    ap = add_common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per row and round")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--no-balanced", action="store_true", help="skip the balanced-manifold rows")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--before", default=BEFORE, help="git revision of the 'before' rows")
    ap.add_argument("--no-before", action="store_true", help="skip the 'before' rows")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    clock = Clock(device)
    d = args.width or (64 if args.quick else 256)
    N = args.depth
    steps = args.steps or (4 if args.quick else 8)
    rounds = args.rounds or (2 if args.quick else 5)
    n, batch = 8 * d, min(512, 8 * d)
    loss = make_data(d, n, device, dtype)
    libs = {"": _Lib(current_manifolds, current_optimizers)}
    old = None if args.no_before else load_package(args.before)
    if old is not None:
        libs["before "] = _Lib(submodule(old, "manifolds"), submodule(old, "optimizers"))
    e2e = current_manifolds.end_to_end
    # a generic start near I (the SVD of I itself would be unrealistically cheap)
    gen = torch.Generator(device=device).manual_seed(3)
    noise = torch.randn(d, d, generator=gen, device=device, dtype=dtype)
    X0 = torch.eye(d, device=device, dtype=dtype) + (0.1 / d**0.5) * noise
    W0 = current_manifolds.balanced_from(X0, None, N)

    def cost_w(W, b):
        return loss(e2e(W), b)

    kinds = [("quotient", X0, loss)] + ([] if args.no_balanced else [("balanced", W0, cost_w)])
    lr = {"sgd": 1e-2, "adam": 1e-3}
    t: dict[str, list[float]] = {}
    for _ in range(rounds):
        rec = {
            "limit quotient": time_limit(X0, loss, lambda X: X, n, batch, steps, clock),
            "torch.optim.SGD (factors)": time_torch(
                "sgd", W0, loss, e2e, n, batch, steps, lr["sgd"], clock
            ),
            "torch.optim.Adam (factors)": time_torch(
                "adam", W0, loss, e2e, n, batch, steps, lr["adam"], clock
            ),
        }
        if not args.no_balanced:
            rec["limit balanced"] = time_limit(W0, cost_w, e2e, n, batch, steps, clock)
        for tag, lib in libs.items():
            for kind, x0, cost in kinds:
                cls = (
                    lib.manifolds.ObservableQuotient
                    if kind == "quotient"
                    else (lib.manifolds.BalancedManifold)
                )
                manifold = cls(d, N, backend="torch", device=device, dtype=dtype)
                for name in ("sgd", "adam"):
                    label = f"{tag}Riemannian{'SGD' if name == 'sgd' else 'Adam'} {kind}"
                    s = max(2, steps // 2) if kind == "balanced" else steps
                    rec[label] = time_riemannian(
                        lib, name, manifold, x0, cost, n, batch, s, lr[name], clock
                    )
        for k, v in rec.items():
            t.setdefault(k, []).append(v)
        per = ", ".join(f"{k}: {1e3 * v:.1f}" for k, v in rec.items())
        print(f"round [ms/step]: {per}", flush=True)

    def ratio(label, base):
        return statistics.median(a / b for a, b in zip(t[label], t[base], strict=True))

    print(
        f"\nwidth {d}, depth {N}, batch {batch}, {args.dtype}, device {device}, "
        f"threads {torch.get_num_threads()}, {rounds} rounds of {steps} steps, "
        f"before={None if old is None else args.before}"
    )
    print(f"{'row':40s} {'ms/step':>9s} {'/ limit':>8s} {'/ torch.optim':>14s}")
    out = []
    where = f"{args.dtype} {device.type}, batch {batch}"
    for label, v in t.items():
        ms = 1e3 * statistics.median(v)
        if label.startswith("limit") or label.startswith("torch"):
            print(f"{label:40s} {ms:9.2f}")
            continue
        kind = label.rsplit(" ", 1)[1]
        base = "torch.optim.Adam (factors)" if "Adam" in label else "torch.optim.SGD (factors)"
        r_lim, r_torch = ratio(label, f"limit {kind}"), ratio(label, base)
        print(f"{label:40s} {ms:9.2f} {r_lim:8.2f} {r_torch:14.2f}")
        target = " (target <= 1.5 at d=256 N=4)" if kind == "quotient" else " (no target)"
        out.append({
            "benchmark": label, "size": f"d={d} N={N}", "time_s": ms / 1e3, "ratio": r_lim,
            "note": f"step / limit (loss+grad+one SVD), {where}{target}; "
            f"/ {base.split(' ')[0]} {r_torch:.2f}",
        })  # fmt: skip
    print()
    return emit(out, args.json, title="summary (time_s per step; ratio: step / limit)")


if __name__ == "__main__":
    main()
