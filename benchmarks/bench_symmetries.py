"""Time of the symmetry analysis (no Jacobian check) on a ResNet-18-sized CNN and a 6-layer
GPT-style transformer (d=512, 8 heads); Torch-Pruning's DepGraph build if installed.

    python benchmarks/bench_symmetries.py [--quick] [--device cpu] [--tracer auto|fx|export]
        [--json PATH]

Rows for ``_report.emit``: ratio = seconds / 5 s (the target is < 5 s, i.e. ratio < 1);
the Torch-Pruning comparison, when installed, is in the note.
"""

import argparse
import time

import torch
import torch.nn.functional as F
from _report import add_common_arguments, emit  # noqa: E402
from torch import nn

from thermanopt.analysis import find_symmetries


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    def __init__(self, n=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for cout, s in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [Basic(cin, cout, s), Basic(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, n)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, h, batch_first=True)
        self.fc, self.proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab=1000, d=512, h=8, n_layers=6, T=64):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(T, d))
        self.blocks = nn.ModuleList([Block(d, h) for _ in range(n_layers)])
        self.lnf = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        x = self.emb(idx) + self.pos[: idx.shape[1]]
        for b in self.blocks:
            x = b(x)
        return self.head(self.lnf(x))


TARGET_S = 5.0  # issue target: the analysis of each model in under 5 s


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main() -> list[dict]:
    ap = add_common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--tracer", default="auto")
    a = ap.parse_args()
    size = 64 if a.quick else 224
    cases = [("ResNet-18", ResNet18(), torch.randn(1, 3, size, size)),
             ("GPT-6 d512 h8", GPT(), torch.randint(0, 1000, (1, 32 if a.quick else 64)))]
    try:
        import torch_pruning as tp
    except ImportError:
        tp = None
        print("Torch-Pruning: not installed")
    print(f"{'model':<16}{'params':>12}{'tracer':>9}{'seconds':>9}{'target':>8}{'TP s':>8}"
          f"{'ratio':>8}  symmetries")
    rows = []
    for name, m, x in cases:
        m, x = m.to(a.device), x.to(a.device)
        _sync(a.device)
        t = time.perf_counter()
        r = find_symmetries(m, x, verify=False, tracer=a.tracer)
        _sync(a.device)
        dt = time.perf_counter() - t
        tps, ratio = "-", "-"
        if tp is not None:
            t = time.perf_counter()
            tp.DependencyGraph().build_dependency(m, example_inputs=x)
            tpt = time.perf_counter() - t
            tps, ratio = f"{tpt:.2f}", f"{dt / tpt:.2f}"
        print(f"{name:<16}{r.n_parameters:>12,}{r.tracer:>9}{dt:>9.2f}{'<5':>8}{tps:>8}"
              f"{ratio:>8}  {len(r.symmetries)} (cont. dim {r.continuous_dim})")
        note = (f"seconds / 5 s target (< 1 met), {a.device}, tracer {r.tracer}, "
                f"{len(r.symmetries)} symmetries")
        if tp is not None:
            note += f"; Torch-Pruning DepGraph {tps} s (ours / TP {ratio})"
        rows.append({"benchmark": f"find_symmetries {name}",
                     "size": f"{r.n_parameters / 1e6:.1f}M params", "time_s": dt,
                     "ratio": dt / TARGET_S, "note": note})
    print()
    return emit(rows, a.json, title="summary")


if __name__ == "__main__":
    main()
