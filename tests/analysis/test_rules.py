"""One rule per op: the rules added for real architectures, each checked against the
Jacobian nullity (float64 tiny models) and by applying random group elements."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from thermanopt.analysis import find_symmetries, trace  # noqa: E402
from thermanopt.analysis.rules import RULES, covered_ops  # noqa: E402
from thermanopt.analysis.tracing import clear_cache  # noqa: E402


def exact(build, x, **kw):
    """Report of a float64 model built under a fixed seed (no accidentally dead units);
    asserts every claim verified and no op unhandled."""
    torch.manual_seed(0)
    r = find_symmetries(build().double(), x, output="raw", **kw)
    assert not r.unhandled_ops, r.unhandled_ops
    assert all(s.verified is not False for s in r.symmetries), r.table()
    return r


def test_registry_has_one_rule_per_op():
    assert len(set(covered_ops())) == len(RULES)
    for op in ("linear", "conv", "addmm", "batch_norm", "group_norm", "sdpa", "rnn", "split",
               "unbind", "index", "pad", "hardswish", "silu", "gelu", "item", "constant"):
        assert op in RULES, op


class DepthwiseBlock(nn.Module):
    """1x1 conv -> ReLU -> depthwise 3x3 -> ReLU -> 1x1 conv (MobileNet block)."""

    def __init__(self, c=4):
        super().__init__()
        self.a = nn.Conv2d(2, c, 1)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.b = nn.Conv2d(c, 3, 1)

    def forward(self, x):
        return self.b(F.relu(self.dw(F.relu(self.a(x)))))


def test_depthwise_convolution_is_a_diagonal_map():
    r = exact(DepthwiseBlock, torch.randn(2, 2, 5, 5, dtype=torch.float64))
    assert r.complete is True and r.continuous_dim == r.jacobian_nullity == 8
    assert any(s.kind == "permutation" and {p["name"] for p in s.parameters} >=
               {"a.weight", "dw.weight", "b.weight"} for s in r.symmetries)


class ScaledMLP(nn.Module):
    """``l2(relu(l1(x) * g))``: a product with a parameter between two spaces."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(3, 4), nn.Linear(4, 2)
        self.g = nn.Parameter(torch.randn(4))

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x) * self.g))


def test_product_with_a_parameter_carries_both_spaces():
    """``x -> D_x x`` is compensated by ``g -> g / D_x`` (both rescales verify)."""
    r = exact(ScaledMLP, torch.randn(6, 3, dtype=torch.float64))
    assert r.complete is True and r.continuous_dim == 8
    assert [s.verified for s in r.by_kind("rescale")] == [True, True]


class ConvBN(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, c, 3, bias=False), nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 3, 1)

    def forward(self, x):
        return self.conv2(F.relu(self.bn1(self.conv1(x))))


def _eval_bn() -> nn.Module:
    m = ConvBN()
    with torch.no_grad():
        m.bn1.running_mean.normal_(0.0, 0.1)
        m.bn1.running_var.uniform_(0.5, 2.0)
        m.bn1.weight.normal_(1.0, 0.3)
        m.bn1.bias.normal_(0.0, 0.1)
    return m.eval()


def test_eval_batchnorm_keeps_channel_permutations_and_rescale():
    """The per-channel affine ``A x + B`` (running statistics fixed) keeps the rescale of the
    conv channel against gamma and the channel permutations."""
    r = exact(_eval_bn, torch.randn(4, 2, 5, 5, dtype=torch.float64), jacobian=True)
    perms = r.by_kind("permutation")
    assert perms and {"conv1.weight", "bn1.weight", "conv2.weight"} <= {
        p["name"] for p in perms[0].parameters}
    assert r.complete is True and r.continuous_dim == r.jacobian_nullity == 8


def _group_norm_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 1), nn.GroupNorm(2, 4, eps=0.0), nn.ReLU(),
                         nn.Conv2d(4, 2, 1))


def test_group_norm_permutes_groups_and_channels_within_groups():
    """Permutations of the 2 groups, of the channels inside each group, one scale per group,
    and the per-group shift of the writer's bias (removed by the group mean: 2 directions,
    in the null space of the Jacobian, jacrev)."""
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    r = exact(_group_norm_net, x)
    assert sorted(s.group for s in r.by_kind("permutation")) == ["(S_2)^2", "S_2"]
    assert [s.copies for s in r.by_kind("scale")] == [2]
    shifts = r.by_kind("translation")
    assert [(s.dim, [p["name"] for p in s.parameters]) for s in shifts] == [(2, ["0.bias"])]
    assert r.complete is True and r.jacobian_nullity == r.continuous_dim, r.table()
    t, rep = null_tangents(_group_norm_net, x, torch.randn(6, 2, 4, 4, dtype=torch.float64))
    assert torch.linalg.matrix_rank(t) == t.shape[0] == rep.continuous_dim


def test_under_reporting_names_the_parameters_of_the_gap():
    """Linear -> eval BatchNorm -> Linear (widths 3 -> 4 -> 2): the GL through the
    BatchNorm is reported, but its orbit is smaller at this bottleneck and the bias trade
    ``(b0 + u, B - A u)`` is not: the gap names where the missing directions live."""
    def build():
        m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        with torch.no_grad():
            m[1].running_mean.normal_(0.0, 0.1)
            m[1].running_var.uniform_(0.5, 2.0)
        return m.eval()

    r = exact(build, torch.randn(5, 3, dtype=torch.float64))
    assert r.complete is False and r.jacobian_nullity > r.continuous_dim
    assert r.gaps and "0.weight" in r.gaps[0] and "2.weight" in r.gaps[0], r.gaps
    assert [s.group for s in r.by_kind("general_linear")] == ["GL(4)"]


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_recurrent_hidden_permutations_and_bias_trades(cell):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = cell(3, 4, 2, batch_first=True), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    r = exact(Net, torch.randn(2, 5, 3, dtype=torch.float64))
    assert r.complete is True
    assert len(r.by_kind("permutation")) == 2 and len(r.by_kind("trade")) == 2
    assert r.continuous_dim == (32 if cell is nn.LSTM else 16)
    # h -> -h per unit: only the tanh block (rows 8:12 of 4 x 4 or 3 x 4) flips, verified
    signs = r.by_kind("sign_flip")
    assert [s.group for s in signs] == ["Z_2^4", "Z_2^4"] and all(s.verified for s in signs)
    rows = {p["index"] for s in signs for p in s.parameters
            if p["name"] == "rnn.weight_ih_l0" and p["dim"] == 0}
    assert rows == {"8:12"}, signs


class GQA(nn.Module):
    """Grouped-query attention: 4 query heads share 2 key/value heads."""

    def __init__(self, d=8, hq=4, hkv=2):
        super().__init__()
        self.hq, self.hkv, self.dh = hq, hkv, d // hq
        self.q = nn.Linear(d, hq * self.dh, bias=False)
        self.k = nn.Linear(d, hkv * self.dh, bias=False)
        self.v = nn.Linear(d, hkv * self.dh, bias=False)
        self.o = nn.Linear(hq * self.dh, 3, bias=False)

    def forward(self, x):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.hq, self.dh).transpose(1, 2)
        k = self.k(x).view(B, T, self.hkv, self.dh).transpose(1, 2)
        v = self.v(x).view(B, T, self.hkv, self.dh).transpose(1, 2)
        g = self.hq // self.hkv
        k = k[:, :, None].expand(B, self.hkv, g, T, self.dh).reshape(B, self.hq, T, self.dh)
        v = v[:, :, None].expand(B, self.hkv, g, T, self.dh).reshape(B, self.hq, T, self.dh)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))


def test_grouped_query_attention_is_analysed():
    r = exact(GQA, torch.randn(2, 5, 8, dtype=torch.float64), jacobian=True)
    assert r.continuous_dim > 0 and r.jacobian_nullity >= r.continuous_dim


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    hidden: torch.Tensor | None = None


class PytreeOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return {"out": Out(self.b(h)), "aux": (h.sum(-1),)}


def test_pytree_outputs_are_verified():
    torch.utils._pytree.register_dataclass(Out)
    r = find_symmetries(PytreeOut().double(), torch.randn(4, 3, dtype=torch.float64),
                        output="raw")
    assert r.complete is not False and all(s.verified for s in r.symmetries), r.table()


def test_meta_device_model_is_analysed_without_weights():
    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 8))
    r = find_symmetries(m, torch.zeros(2, 64, device="meta"))
    assert r.continuous_dim == 128 and r.verification.startswith("skipped")
    assert any("meta" in n for n in r.notes)


def test_traced_graph_is_cached_per_signature():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    clear_cache()
    g1 = trace(m, (torch.randn(2, 3),))
    assert trace(m, (torch.randn(2, 3),)) is g1
    assert trace(m, (torch.randn(5, 3),)) is not g1
    m.eval()
    assert trace(m, (torch.randn(2, 3),)) is not g1


class TrainModeAttention(nn.Module):
    """Attention whose dropout reads the module's own flag (as Hugging Face models do);
    Hugging Face models built from a config start in train mode."""

    def __init__(self, d=8):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, 3)

    def forward(self, x):
        y = F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x),
                                           dropout_p=0.3 if self.training else 0.0)
        return self.o(y)


def test_train_mode_attention_dropout_does_not_fail_verification():
    torch.manual_seed(0)
    r = find_symmetries(TrainModeAttention().double().train(),
                        torch.randn(2, 5, 8, dtype=torch.float64), output="raw")
    assert r.symmetries and all(s.verified for s in r.symmetries), r.table()


# ---------------------------------------------------------------------------------------
# fused projections cut into blocks (rules.blocks)


class FusedQKV(nn.Module):
    """One ``qkv`` projection cut into q, k, v as GPT-2 (``split``), timm's ViT
    (``reshape -> permute -> unbind``) or Swin (``select`` per block) do; attention over 2
    heads of 4, an output projection, then tanh and a head."""

    def __init__(self, style: str, d: int = 8, h: int = 2):
        super().__init__()
        self.style, self.h = style, h
        self.qkv, self.o, self.head = nn.Linear(d, 3 * d), nn.Linear(d, d), nn.Linear(d, 2)

    def forward(self, x):
        B, T, d = x.shape
        h, dh = self.h, d // self.h
        y = self.qkv(x)
        if self.style == "split":
            q, k, v = (t.view(B, T, h, dh).transpose(1, 2) for t in y.split(d, dim=2))
        else:
            y = y.reshape(B, T, 3, h, dh).permute(2, 0, 3, 1, 4)
            q, k, v = y.unbind(0) if self.style == "unbind" else (y[0], y[1], y[2])
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, d)
        return self.head(torch.tanh(self.o(a)))


def _jacobian(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """``d f(x) / d theta`` (rows: outputs, columns: flattened parameters) and the point."""
    p = {n: t.detach() for n, t in model.named_parameters()}

    def f(q):
        return torch.func.functional_call(model, q, (x,)).reshape(-1)

    jac = torch.func.jacrev(f)(p)
    return torch.cat([jac[n].reshape(jac[n].shape[0], -1) for n in p], 1), p


def null_tangents(build, x: torch.Tensor, x_jac: torch.Tensor) -> tuple[torch.Tensor, object]:
    """Tangent vectors (rows) of the report of ``build()`` (float64, seed 0) on ``x`` and the
    report, after asserting that every row lies in the null space of an independent
    ``jacrev`` Jacobian of the model at the inputs ``x_jac`` (relative residual < 1e-12)."""
    from thermanopt.analysis.verify import tangent_vectors

    torch.manual_seed(0)
    model = build().double()
    rep = find_symmetries(model, x, output="raw", verify=False)
    jac, p = _jacobian(model, x_jac)
    t = tangent_vectors(rep, p)
    if t.shape[0]:
        assert float((jac @ t.T).norm() / (jac.norm() * t.norm())) < 1e-12
    return t, rep


@pytest.mark.parametrize("style", ["split", "unbind", "select"])
def test_fused_qkv_is_cut_into_blocks(style):
    """q/k and v/out-projection each admit GL(head_dim) per head (not O(head_dim), not
    pinned); the key bias block is null; the value bias block trades with the output bias.
    Every reported tangent is in the null space of the Jacobian (independent jacrev)."""
    x = torch.randn(4, 5, 8, dtype=torch.float64)
    r = exact(lambda: FusedQKV(style), x, jacobian=True)
    assert r.complete is True and r.continuous_dim == r.jacobian_nullity == 80, r.table()
    gl = r.by_kind("general_linear")
    assert sorted(s.group for s in gl) == ["(GL(4))^2", "(GL(4))^2"]
    assert {p["index"] for s in gl for p in s.parameters if p["name"] == "qkv.weight"} == {
        "0:8", "8:16", "16:24"}
    assert [s.parameters[0]["index"] for s in r.by_kind("null")] == ["8:16"]
    t, rep = null_tangents(lambda: FusedQKV(style), x, torch.randn(6, 5, 8, dtype=torch.float64))
    assert t.shape[0] == 80 and torch.linalg.matrix_rank(t) == 80


class SumIntoNorm(nn.Module):
    """``LN(E[t] + W2 gelu(W1 E[t]))`` read by the (tied) embedding or a head: the residual
    space is also read by ``W1``, but the sum itself only by the LayerNorm."""

    def __init__(self, tied: bool, vocab: int = 40, d: int = 4, hidden: int = 6):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.fc, self.proj = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.norm = nn.LayerNorm(d, eps=0.0)  # exact scale symmetry
        self.head = None if tied else nn.Linear(d, 3)

    def forward(self, idx):
        x = self.emb(idx)
        y = self.norm(x + self.proj(F.gelu(self.fc(x))))
        return F.linear(y, self.emb.weight) if self.head is None else self.head(y)


@pytest.mark.parametrize("tied", [True, False])
def test_writer_of_a_sum_read_only_by_layernorms_moves_along_one(tied):
    """``proj`` (weight columns and bias) may move along 1: 6 + 1 directions, in the null
    space of the Jacobian (independent jacrev); the embedding (also read by ``fc``) may not."""
    x = torch.randint(0, 40, (8, 5))
    r = exact(lambda: SumIntoNorm(tied), x, jacobian=tied)
    tr = r.by_kind("translation")
    assert [s.dim for s in tr] == [7] and {p["name"] for p in tr[0].parameters} == {
        "proj.weight", "proj.bias"}
    if tied:  # untied, each embedding row has its own (point-dependent) LayerNorm nulls
        assert r.complete is True and r.continuous_dim == r.jacobian_nullity, r.table()
    t, rep = null_tangents(lambda: SumIntoNorm(tied), x, torch.randint(0, 40, (12, 5)))


class Conv1DBlock(nn.Module):
    """GPT-2's ``Conv1D`` (``addmm(b, x, W)`` with ``W`` stored ``(in, out)``) after a
    LayerNorm: ``addmm(b2, gelu(addmm(b1, LN(x), W1)), W2)``."""

    def __init__(self, d: int = 4, hidden: int = 6):
        super().__init__()
        self.norm = nn.LayerNorm(d, eps=0.0)
        self.w1, self.b1 = nn.Parameter(torch.randn(d, hidden)), nn.Parameter(torch.randn(hidden))
        self.w2, self.b2 = nn.Parameter(torch.randn(hidden, 3)), nn.Parameter(torch.randn(3))

    def forward(self, x):
        h = self.norm(x).reshape(-1, x.shape[-1])
        return torch.addmm(self.b2, F.gelu(torch.addmm(self.b1, h, self.w1)), self.w2)


def test_conv1d_after_layernorm_has_column_nulls_and_a_bias_trade():
    """Columns of ``W1`` move along ``1/gamma`` (6), the LayerNorm bias trades with ``b1``
    through ``W1^T`` (4), the gain rescales ``W1``'s rows (4); tangents null (jacrev)."""
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    r = exact(Conv1DBlock, x, jacobian=True)
    assert r.complete is True and r.continuous_dim == r.jacobian_nullity == 14, r.table()
    assert [s.dim for s in r.by_kind("null")] == [6] and [s.dim for s in r.by_kind("trade")] \
        == [4]
    t, rep = null_tangents(Conv1DBlock, x, torch.randn(7, 5, 4, dtype=torch.float64))
    assert t.shape[0] == 14 and torch.linalg.matrix_rank(t) == 14


class SwiGLU(nn.Module):
    """``W_d (silu(W_g x) * (W_u x))`` (LLaMA's MLP); with ``gate_last`` the factors swap."""

    def __init__(self, gate_last: bool = False, d: int = 3, hidden: int = 5):
        super().__init__()
        self.gate_last = gate_last
        self.g, self.u = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.d = nn.Linear(hidden, 2, bias=False)

    def forward(self, x):
        a, b = F.silu(self.g(x)), self.u(x)
        return self.d(b * a if self.gate_last else a * b)


@pytest.mark.parametrize("gate_last", [False, True])
def test_gated_product_passes_a_diagonal_through_the_linear_factor(gate_last):
    """``W_u -> D W_u``, ``W_d -> W_d D^{-1}`` (5 directions) and sign flips; the gate keeps
    permutations only; tangents null (jacrev)."""
    x = torch.randn(6, 3, dtype=torch.float64)
    r = exact(lambda: SwiGLU(gate_last), x, jacobian=True)
    assert r.complete is True and r.continuous_dim == r.jacobian_nullity == 5, r.table()
    assert [{p["name"] for p in s.parameters} for s in r.by_kind("rescale")] == [
        {"u.weight", "d.weight"}]
    assert r.by_kind("sign_flip")
    t, rep = null_tangents(lambda: SwiGLU(gate_last), x, torch.randn(20, 3, dtype=torch.float64))
    assert t.shape[0] == 5


class SmallMapConv(nn.Module):
    """A large kernel on a small map (ConvNeXt's 7x7 depthwise convolutions late in the
    network), then ReLU, flatten and a head."""

    def __init__(self, conv: nn.Conv2d, size: int):
        super().__init__()
        self.conv = conv
        spatial = (size,) * (conv.weight.dim() - 2)
        n = conv(torch.zeros(1, conv.in_channels, *spatial)).numel()
        self.head = nn.Linear(n, 2)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("conv, size, unused", [
    (lambda: nn.Conv2d(2, 3, 7, padding=3), 2, 6 * (49 - 9)),
    (lambda: nn.Conv2d(2, 4, 4, groups=2, padding=2, stride=3, bias=False), 3, 0),
    (lambda: nn.Conv2d(2, 3, 3, padding=2, dilation=2, stride=2), 2, 6 * (9 - 1)),
    (lambda: nn.Conv2d(2, 3, 5, padding=1), 4, 0),
    (lambda: nn.Conv1d(2, 3, 5, padding=2), 2, 6 * 2),
])
def test_kernel_taps_that_only_meet_padding_are_null(conv, size, unused):
    """Weight entries whose taps never meet a real input element are null directions
    (counted independently here); tangents null (jacrev); exact nullity where the rest of
    the model is analysed."""
    spatial = (size,) * (conv().weight.dim() - 2)
    x = torch.randn(5, 2, *spatial, dtype=torch.float64)
    r = exact(lambda: SmallMapConv(conv(), size), x, jacobian=True)
    taps = sum(s.dim for s in r.by_kind("null") if "padding" in s.note)
    assert taps == unused, r.table()
    if unused:
        assert r.complete is True and r.continuous_dim == r.jacobian_nullity, r.table()
    t, rep = null_tangents(lambda: SmallMapConv(conv(), size), x,
                           torch.randn(30, 2, *spatial, dtype=torch.float64))


class FirstTokenHead(nn.Module):
    """``head(LN(x)[:, 0])``: a classifier on the first token of a LayerNorm output."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.norm, self.head = nn.LayerNorm(d, eps=0.0, bias=False), nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.norm(x)[:, 0])


def test_layernorm_null_of_a_head_reading_one_token():
    """The selected token is still orthogonal to 1: the head's rows move along 1/gamma (3),
    besides the gain rescale (4); tangents null (jacrev)."""
    x = torch.randn(6, 5, 4, dtype=torch.float64)
    r = exact(FirstTokenHead, x, jacobian=True)
    assert [s.dim for s in r.by_kind("null")] == [3], r.table()
    assert r.complete is True and r.continuous_dim == r.jacobian_nullity == 7, r.table()
    t, rep = null_tangents(FirstTokenHead, x, torch.randn(9, 5, 4, dtype=torch.float64))
    assert t.shape[0] == 7


def _bottleneck(conv: bool) -> nn.Module:
    """A linear bottleneck (EfficientNet's projection): map -> eval BatchNorm -> map, widths
    4 -> 3 -> 4, BatchNorm statistics away from (0, 1); the convolutional one without the
    last bias (no trade of ``B`` against it)."""
    if conv:
        m = nn.Sequential(nn.Conv2d(4, 3, 1, bias=False), nn.BatchNorm2d(3),
                          nn.Conv2d(3, 4, 1, bias=False))
    else:
        m = nn.Sequential(nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3), nn.Linear(3, 4))
    with torch.no_grad():
        m[1].running_mean.normal_(0.0, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].weight.normal_(1.0, 0.3)
    return m.eval()


@pytest.mark.parametrize("conv", [False, True])
def test_general_linear_maps_pass_through_eval_batchnorm(conv):
    """``M`` before the BatchNorm, ``diag(A) M diag(A)^-1`` after it: 3 x 2 off-diagonal
    directions beside the two rescalings (3 + 3) and, for the linear one, the bias trade
    (3); exact nullity; tangents null (jacrev)."""
    x = torch.randn(6, 4, 2, 2, dtype=torch.float64) if conv else \
        torch.randn(6, 4, dtype=torch.float64)
    r = exact(lambda: _bottleneck(conv), x, jacobian=True)
    assert [(s.group, s.dim) for s in r.by_kind("general_linear")] == [("GL(3)", 6)]
    total = 12 if conv else 15
    assert r.complete is True and r.continuous_dim == r.jacobian_nullity == total, r.table()
    t, rep = null_tangents(lambda: _bottleneck(conv), x,
                           torch.randn(8, *x.shape[1:], dtype=torch.float64))
    assert t.shape[0] == total and torch.linalg.matrix_rank(t) == total


class SummedTables(nn.Module):
    """Token + position embeddings, summed, optionally normalised, then a head."""

    def __init__(self, norm: bool, vocab: int = 10, length: int = 5, d: int = 4):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(length, d)
        self.norm = nn.LayerNorm(d, eps=0.0) if norm else nn.Identity()
        self.head = nn.Linear(d, 6)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.head(self.norm(self.tok(idx) + self.pos(pos)))


@pytest.mark.parametrize("norm", [False, True])
def test_summed_embedding_tables_trade_a_shift(norm):
    """``E_tok += 1 u^T``, ``E_pos -= 1 u^T``: d directions, d - 1 when a LayerNorm reads the
    sum (``u = 1`` is then the difference of the two tables' centring shifts); tangents
    null (jacrev) and linearly independent of the other reported directions."""
    x = torch.randint(0, 10, (8, 5))
    r = exact(lambda: SummedTables(norm), x)
    trades = [s for s in r.by_kind("trade") if "embedding" in s.note]
    assert [s.dim for s in trades] == [3 if norm else 4], r.table()
    t, rep = null_tangents(lambda: SummedTables(norm), x, torch.randint(0, 10, (20, 5)))
    assert torch.linalg.matrix_rank(t) == t.shape[0] == rep.continuous_dim


class GroupNormAndSkip(nn.Module):
    """The conv output also feeds a skip branch: its bias may not shift per group."""

    def __init__(self):
        super().__init__()
        self.a, self.gn = nn.Conv2d(2, 4, 1), nn.GroupNorm(2, 4, eps=0.0)
        self.b, self.c = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.a(x)
        return self.b(torch.relu(self.gn(y))) + self.c(y)


def test_group_shift_needs_the_group_norm_to_be_the_only_reader():
    r = exact(GroupNormAndSkip, torch.randn(3, 2, 4, 4, dtype=torch.float64))
    assert not r.by_kind("translation"), r.table()
