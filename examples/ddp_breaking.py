"""Symmetry breaking and the entropic loss of SGD under DistributedDataParallel.

Trains a small ReLU MLP with plain SGD (minibatch of 32) on every rank of a
``torch.distributed`` job, the model wrapped in ``DistributedDataParallel``, and records

- with ``track_breaking(..., process_group=...)`` the charge of every continuous symmetry
  (rescale of each hidden unit: ``|W_in[i,:]|^2 + b_in[i]^2 - |W_out[:,i]|^2``) and the
  invariance of the discrete ones, once per step, the same record on every rank;
- with ``entropic_loss(..., process_group=...)`` the entropic loss of this SGD on the whole
  data set (``L + (lr/4)|grad L|^2 + (lr/4) E_B|g_B - g|^2``), each rank holding a shard.

The record equals that of one process on the concatenated batches (Ziyin, Xu & Chuang,
arXiv 2505.12387: SGD noise breaks the rescale symmetry; the charges drift by exactly
``lr^2 g^T A g`` per step). Run it on one machine with two processes (gloo on CPUs, NCCL
with one GPU per process), or as a plain script in one process::

    torchrun --nproc_per_node 2 examples/ddp_breaking.py [--quick] [--out examples/figures]
    python examples/ddp_breaking.py [--quick] [--out examples/figures]

Output (rank 0): ``ddp_breaking.png`` and the verdicts of ``classify_breaking``.
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from thermanopt.analysis import classify_breaking, find_symmetries, track_breaking  # noqa: E402
from thermanopt.entropy import entropic_loss  # noqa: E402


def plot(history, entropic, path: str) -> None:
    """Left: the rescale charges of the hidden units; right: the entropic-loss parts."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for lab in history.labels:
        if ":rescale:" in lab:
            q = np.asarray(history.charge[lab], dtype=float).reshape(len(history.loss) + 1, -1)
            ax.plot(q - q[0], lw=1)
    ax.set(xlabel="step", ylabel="C_i(t) - C_i(0)",
           title="rescale charges of the hidden units under SGD")
    parts = np.asarray(entropic)
    for k, name in enumerate(("loss L", "(lr/4)|grad L|^2", "(lr/4) E_B|g_B - g|^2")):
        bx.semilogy(parts[:, k + 1], label=name)
    bx.set(xlabel="step", title="entropic loss of SGD on the whole data set")
    bx.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description="SGD symmetry breaking under DDP")
    parser.add_argument("--quick", action="store_true", help="40 steps, for tests")
    parser.add_argument("--out", default=os.path.join("examples", "figures"))
    args = parser.parse_args()

    # one process per GPU (NCCL) or CPU processes (gloo); torchrun sets RANK, WORLD_SIZE
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}"
                          if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)

    g = torch.Generator().manual_seed(0)  # one data set, the same on every rank
    X = torch.randn(256, 8, generator=g, dtype=torch.float64)
    Y = torch.tanh(X @ torch.randn(8, 2, generator=g, dtype=torch.float64))
    Y = Y + 0.3 * torch.randn(256, 2, generator=g, dtype=torch.float64)
    X, Y = X.to(device), Y.to(device)
    shard = slice(rank, None, world)  # this rank's part of every batch
    loss_fn = nn.functional.mse_loss

    torch.manual_seed(0)  # the same initial weights on every rank
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).double().to(device)
    with torch.no_grad():  # an unbalanced start: SGD noise moves the rescale charges
        model[0].weight.mul_(2.0)
        model[2].weight.mul_(0.5)
    report = find_symmetries(model, X[:4], output="raw", verify=False)
    net = DDP(model) if distributed else model
    lr, batch, n_steps = 0.05, 32, (40 if args.quick else 400)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    draw = torch.Generator().manual_seed(1)  # the same minibatch draw on every rank
    entropic = []

    def step(m):
        with torch.no_grad():  # entropic loss of this SGD, on the whole data set
            parts = entropic_loss(m, loss_fn, (X[shard], Y[shard]), lr, batch_size=batch,
                                  process_group="auto")
        entropic.append([float(t) for t in parts])
        idx = torch.randint(0, len(X), (batch,), generator=draw).to(device)[shard]
        opt.zero_grad()
        loss = loss_fn(m(X[idx]), Y[idx])
        loss.backward()  # DDP averages: .grad is the gradient of the global minibatch
        opt.step()
        return loss.detach()  # this rank's loss; track_breaking averages over the ranks

    history = track_breaking(net, report, step, n_steps, lr=lr, process_group="auto")
    if rank == 0:
        verdicts = classify_breaking(history)
        for name, v in verdicts.items():
            extra = (f"drift {v['drift']:.3e}, exact identity max err "
                     f"{v['step_prediction_error']:.1e}" if "step_prediction_error" in v else "")
            print(f"{name:32s} {v['verdict']:10s} {extra}")
        charges = sum(float(np.sum(history.charge[lab][-1])) for lab in history.labels)
        print(f"world size {world}: final loss {history.loss[-1]:.12e}, "
              f"charge sum {charges:.12e}, noise term {entropic[-1][3]:.12e}")
        os.makedirs(args.out, exist_ok=True)
        plot(history, entropic, os.path.join(args.out, "ddp_breaking.png"))
        print("wrote", os.path.join(args.out, "ddp_breaking.png"))
    if distributed:
        dist.barrier()  # every rank is done with the group before it goes
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
