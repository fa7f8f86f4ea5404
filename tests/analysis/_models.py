"""Small models shared by the analysis tests."""

import torch
import torch.nn.functional as F
from torch import nn


def mlp(sizes, act=nn.ReLU, bias=True):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=bias))
        if i < len(sizes) - 2 and act is not None:
            layers.append(act())
    return nn.Sequential(*layers)


class HandAttention(nn.Module):
    """Hand-written multi-head self-attention with scaled_dot_product_attention."""

    def __init__(self, d=8, h=2, n_out=3):
        super().__init__()
        self.h = h
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.head = nn.Linear(d, n_out)

    def forward(self, x):
        B, T, d = x.shape
        h = self.h
        q = self.q(x).view(B, T, h, d // h).transpose(1, 2)
        k = self.k(x).view(B, T, h, d // h).transpose(1, 2)
        v = self.v(x).view(B, T, h, d // h).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)
        y = y.transpose(1, 2).reshape(B, T, d)
        return self.head(torch.tanh(self.o(y)))


class MHAModel(nn.Module):
    def __init__(self, d=8, h=2, n_out=3):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, h, batch_first=True)
        self.head = nn.Linear(d, n_out)

    def forward(self, x):
        return self.head(torch.tanh(self.attn(x, x, x, need_weights=False)[0]))


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 3, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        y = F.relu(self.bn(self.c1(x)))
        y = F.max_pool2d(F.relu(self.c2(y)), 2)
        return self.fc(self.pool(y).flatten(1))


class TiedLM(nn.Module):
    def __init__(self, vocab=7, d=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.lin = nn.Linear(d, d, bias=False)
        self.ln = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, idx):
        x = self.emb(idx)
        return self.out(self.lin(torch.relu(self.ln(x))))


def small_relu_mlp():
    """Factory used by the CLI test (``_models:small_relu_mlp``)."""
    torch.manual_seed(0)
    return mlp([5, 4, 2])


class TinyGPT(nn.Module):
    """Pre-LN transformer block with tied embeddings (nn.MultiheadAttention)."""

    def __init__(self, vocab=13, d=8, h=2, T=6):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(T, d) * 0.1)
        self.ln1, self.ln2, self.lnf = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, h, batch_first=True)
        self.fc, self.proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        x = self.emb(idx) + self.pos[: idx.shape[1]]
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        x = x + self.proj(F.gelu(self.fc(self.ln2(x))))
        return self.head(self.lnf(x))


class TinyResNet(nn.Module):
    """Stem + a residual block with a strided 1x1-conv shortcut (both branches BatchNorm)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(4), nn.ReLU())
        self.c1 = nn.Conv2d(4, 6, 3, 2, 1, bias=False)
        self.b1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(6)
        self.down = nn.Sequential(nn.Conv2d(4, 6, 1, 2, bias=False), nn.BatchNorm2d(6))
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        y = F.relu(y + self.down(x))
        return self.fc(y.mean((2, 3)))
