"""Model zoo of the symmetry tests (issue 13): real architectures, random init, no downloads.

Three sizes of each family:

- :func:`full_cases`: the published architectures (torchvision, timm, Hugging Face
  transformers, torch recurrent layers, a tied-embedding language model, a GroupNorm CNN),
  float32, eval mode.
- :func:`tiny_cases`: the same architecture classes with small widths, depths, images and
  vocabularies (<= 20k parameters, float64, parameters moved off their special init point),
  small enough for an independent Jacobian-nullity check.
- :func:`meta_cases`: LLaMA-7B- and 70B-shaped configs built on the ``meta`` device.

Each :class:`Case` builds its model and draws random example inputs of any batch size
(token ids are int64). ``tests/conftest.py`` makes ``import torchvision`` work beside the
CPU torch wheel; timm and transformers are imported lazily, so a missing package only skips
the cases that need it (see :func:`requires`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

Inputs = Callable[[int, torch.Generator], tuple]


@dataclass(frozen=True)
class Case:
    """One zoo model: ``build()`` returns it (eval mode), ``inputs(batch, gen)`` its inputs."""

    name: str
    family: str
    build: Callable[[], nn.Module]
    inputs: Inputs
    package: str = "torch"
    slow: bool = False
    verify: bool = True
    float32_inside: bool = False  # computes in float32 even in a float64 model (HF RMSNorm)

    def example_inputs(self, batch: int = 1, seed: int = 0) -> tuple:
        """Random example inputs (batch ``batch``) drawn from a seeded generator."""
        return self.inputs(batch, torch.Generator().manual_seed(seed))


def requires(case: Case) -> str:
    """The importable module a case needs beyond torch ("" when none)."""
    return {"torchvision": "torchvision", "timm": "timm",
            "transformers": "transformers"}.get(case.package, "")


def n_parameters(model: nn.Module) -> int:
    """Number of distinct parameter entries (tied parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------
# inputs


def images(size: int, channels: int = 3, dtype: torch.dtype = torch.float32) -> Inputs:
    """Inputs: one batch of ``channels x size x size`` standard-normal images."""

    def draw(batch: int, gen: torch.Generator) -> tuple:
        return (torch.randn(batch, channels, size, size, generator=gen, dtype=dtype),)

    return draw


def tokens(vocab: int, length: int) -> Inputs:
    """Inputs: one batch of int64 token ids of length ``length`` below ``vocab``."""

    def draw(batch: int, gen: torch.Generator) -> tuple:
        return (torch.randint(0, vocab, (batch, length), generator=gen, dtype=torch.int64),)

    return draw


def sequences(features: int, length: int, dtype: torch.dtype = torch.float32) -> Inputs:
    """Inputs: one batch of standard-normal sequences ``(batch, length, features)``."""

    def draw(batch: int, gen: torch.Generator) -> tuple:
        return (torch.randn(batch, length, features, generator=gen, dtype=dtype),)

    return draw


def _ready(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    return model.to(dtype).eval()


def _tiny(model: nn.Module, draw: Inputs, seed: int = 1) -> nn.Module:
    """float64, eval mode, every parameter moved off its special init point.

    Default inits put ones in norm gains and zeros in biases (and 1e-6 in ConvNeXt's layer
    scales), where the Jacobian can lose rank that a generic point has: the exactness tests
    compare against the generic nullity, so each entry gets an independent N(0, 0.3^2)
    shift. Norm layers other than BatchNorm get eps = 0 (see :func:`_exact_norms`).
    BatchNorm running statistics are set from 64 random inputs, as training would set them:
    with the init statistics (mean 0, variance 1) shifted biases leave some ReLU units dead
    on every input, and their weights join the nullity through the data.
    """
    gen = torch.Generator().manual_seed(seed)
    model = _ready(model, torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    _calibrate_batchnorm(model, draw(64, gen))
    _exact_norms(model)
    return model


def _exact_norms(model: nn.Module) -> None:
    """eps = 0 in every LayerNorm/GroupNorm/RMSNorm (BatchNorm keeps its eps).

    With eps > 0 the scale symmetry of a normalised input is only approximate: its Jacobian
    singular value sits near eps / variance, where no rank cut can tell it from a weak but
    real direction. With eps = 0 it is exact and the reference nullity is unambiguous.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        for attr in ("eps", "variance_epsilon"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 0.0)


def _calibrate_batchnorm(model: nn.Module, inputs: tuple) -> None:
    """Running statistics of every BatchNorm = the batch statistics of ``inputs``."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch gives its own statistics
    model.train()
    with torch.no_grad():
        model(*inputs)
    for m in norms:
        m.momentum = 0.1
    model.eval()


# ----------------------------------------------------------------------------------------
# torch-only models: recurrent nets and tied embeddings


class Recurrent(nn.Module):
    """``nn.LSTM`` or ``nn.GRU`` (batch first) and a linear head on the last time step."""

    def __init__(self, cell: str, features: int, hidden: int, layers: int, n_out: int):
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y[:, -1])


class TiedLM(nn.Module):
    """Embedding, a residual GELU MLP, LayerNorm and an output layer tied to the embedding."""

    def __init__(self, vocab: int, d: int, hidden: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.fc, self.proj = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        x = x + self.proj(nn.functional.gelu(self.fc(x)))
        return self.head(self.norm(x))


class GroupNormCNN(nn.Module):
    """Conv-GroupNorm-ReLU blocks with a residual stream, average pool and a linear head."""

    def __init__(self, channels: int, groups: int, blocks: int, n_out: int):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1, bias=False)
                                   for _ in range(blocks))
        self.norms = nn.ModuleList(nn.GroupNorm(groups, channels) for _ in range(blocks))
        self.head = nn.Linear(channels, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for conv, norm in zip(self.convs, self.norms):
            x = x + torch.relu(norm(conv(x)))
        return self.head(x.mean(dim=(2, 3)))


def _seeded(build: Callable[[], nn.Module], seed: int = 0) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(seed)
        return build()

    return make


# ----------------------------------------------------------------------------------------
# torchvision


def _tv(name: str, **kwargs) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import torchvision.models as tvm

        return _ready(getattr(tvm, name)(weights=None, **kwargs))

    return make


def _tiny_resnet(bottleneck: bool) -> nn.Module:
    """torchvision's BasicBlock/Bottleneck in a 2-stage ResNet (stem, projection shortcut)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    block = Bottleneck if bottleneck else BasicBlock
    planes = 2 if bottleneck else 4
    out1, out2 = planes * block.expansion, 2 * planes * block.expansion

    def shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
        if cin == cout and stride == 1:
            return None
        return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    return nn.Sequential(
        nn.Conv2d(3, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        block(4, planes, downsample=shortcut(4, out1, 1)),
        block(out1, 2 * planes, 2, downsample=shortcut(out1, out2, 2)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(out2, 3),
    )


def _tiny_mobilenet_v3() -> nn.Module:
    from torchvision.models.mobilenetv3 import InvertedResidualConfig as C
    from torchvision.models.mobilenetv3 import MobileNetV3

    setting = [C(8, 3, 8, 8, True, "RE", 2, 1, 1.0), C(8, 3, 8, 8, False, "HS", 1, 1, 1.0)]
    return MobileNetV3(setting, last_channel=8, num_classes=3)


def _tiny_efficientnet() -> nn.Module:
    from torchvision.models.efficientnet import EfficientNet, MBConvConfig

    setting = [MBConvConfig(1, 3, 1, 8, 8, 1), MBConvConfig(2, 3, 2, 8, 8, 1)]
    return EfficientNet(setting, dropout=0.0, stochastic_depth_prob=0.0, num_classes=3,
                        last_channel=16)


def _tiny_convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(4, 4, 1), CNBlockConfig(4, None, 1)], num_classes=3)


def _tiny_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=8, patch_size=4, num_layers=1, num_heads=2,
                             hidden_dim=8, mlp_dim=16, num_classes=3)


def _tiny_swin() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(patch_size=[4, 4], embed_dim=4, depths=[1, 1], num_heads=[2, 2],
                           window_size=[2, 2], mlp_ratio=2.0, stochastic_depth_prob=0.0,
                           num_classes=3)


# ----------------------------------------------------------------------------------------
# timm


def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, **kwargs)

    return make


# ----------------------------------------------------------------------------------------
# Hugging Face transformers (built from config objects: nothing is downloaded)


def gpt2_config(**overrides):
    """GPT-2 small (124M) config, or a variant; no KV cache (outputs are plain tensors)."""
    from transformers import GPT2Config

    return GPT2Config(use_cache=False, **overrides)


def bert_config(**overrides):
    """BERT-base config, or a variant."""
    from transformers import BertConfig

    return BertConfig(**overrides)


def llama_config(**overrides):
    """A LLaMA-style config (RMSNorm, rotary, SwiGLU); the defaults give ~100M parameters."""
    from transformers import LlamaConfig

    base = dict(vocab_size=32000, hidden_size=640, intermediate_size=1728,
                num_hidden_layers=12, num_attention_heads=10, num_key_value_heads=10,
                max_position_embeddings=2048, use_cache=False, tie_word_embeddings=False)
    base.update(overrides)
    return LlamaConfig(**base)


def _hf(model_class: str, config: Callable) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        return getattr(transformers, model_class)(config())

    return make


LLAMA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32)
LLAMA_70B = dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672,
                 num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8)

_TINY_LLAMA = dict(vocab_size=13, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8)
_TINY_GPT2 = dict(vocab_size=13, n_positions=6, n_embd=8, n_layer=1, n_head=2, bos_token_id=0,
                  eos_token_id=0)
_TINY_BERT = dict(vocab_size=13, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=12, max_position_embeddings=6)


# ----------------------------------------------------------------------------------------
# the cases


def full_cases() -> list[Case]:
    """Every full-size model of issue 13 (random init, float32, eval mode)."""
    img = images(64)
    return [
        Case("resnet18", "resnet", _tv("resnet18"), img, "torchvision"),
        Case("resnet50", "resnet_bottleneck", _tv("resnet50"), img, "torchvision", slow=True),
        Case("mobilenet_v3_small", "mobilenet_v3", _tv("mobilenet_v3_small"), img,
             "torchvision"),
        Case("efficientnet_b0", "efficientnet", _tv("efficientnet_b0"), img, "torchvision",
             slow=True),
        Case("convnext_tiny", "convnext", _tv("convnext_tiny"), img, "torchvision", slow=True),
        Case("vit_b_16", "vit", _tv("vit_b_16"), images(224), "torchvision", slow=True,
             verify=False),
        Case("swin_t", "swin", _tv("swin_t"), img, "torchvision", slow=True),
        Case("timm_vit_tiny_patch16_224", "timm_vit", _timm("vit_tiny_patch16_224"),
             images(224), "timm"),
        Case("timm_convnext_atto", "timm_convnext", _timm("convnext_atto"), img, "timm"),
        Case("gpt2", "gpt2", _hf("GPT2LMHeadModel", gpt2_config), tokens(50257, 16),
             "transformers", slow=True, verify=False),
        Case("bert_base", "bert", _hf("BertModel", bert_config), tokens(30522, 16),
             "transformers", slow=True, verify=False),
        Case("llama_100m", "llama", _hf("LlamaForCausalLM", llama_config), tokens(32000, 16),
             "transformers", slow=True, verify=False),
        Case("lstm", "lstm", _seeded(lambda: Recurrent("lstm", 64, 160, 2, 10).eval()),
             sequences(64, 12)),
        Case("gru", "gru", _seeded(lambda: Recurrent("gru", 64, 160, 2, 10).eval()),
             sequences(64, 12)),
        Case("tied_lm", "tied", _seeded(lambda: TiedLM(1000, 128, 512).eval()),
             tokens(1000, 16)),
        Case("groupnorm_cnn", "groupnorm", _seeded(lambda: GroupNormCNN(64, 8, 4, 10).eval()),
             img),
    ]


def _tiny_case(name: str, family: str, build: Callable[[], nn.Module], inputs: Inputs,
               package: str = "torch", float32_inside: bool = False) -> Case:
    return Case(f"tiny_{name}", family, _seeded(lambda: _tiny(build(), inputs)), inputs,
                package, float32_inside=float32_inside)


def _tiny_hf(model_class: str, config: Callable, overrides: dict) -> Callable[[], nn.Module]:
    return _hf(model_class, lambda: config(**overrides))


def tiny_cases() -> list[Case]:
    """A <= 20k-parameter float64 instance of every family of :func:`full_cases`."""
    img16, img8 = images(16, dtype=torch.float64), images(8, dtype=torch.float64)
    return [
        _tiny_case("resnet18", "resnet", lambda: _tiny_resnet(False), img16, "torchvision"),
        _tiny_case("resnet50", "resnet_bottleneck", lambda: _tiny_resnet(True), img16,
                   "torchvision"),
        _tiny_case("mobilenet_v3_small", "mobilenet_v3", _tiny_mobilenet_v3, img16,
                   "torchvision"),
        _tiny_case("efficientnet_b0", "efficientnet", _tiny_efficientnet, img16,
                   "torchvision"),
        _tiny_case("convnext_tiny", "convnext", _tiny_convnext, img16, "torchvision"),
        _tiny_case("vit_b_16", "vit", _tiny_vit, img8, "torchvision"),
        _tiny_case("swin_t", "swin", _tiny_swin, img16, "torchvision"),
        _tiny_case("timm_vit_tiny_patch16_224", "timm_vit",
                   _timm("vit_tiny_patch16_224", img_size=8, patch_size=4, embed_dim=8,
                         depth=1, num_heads=2, mlp_ratio=2.0, num_classes=3), img8, "timm"),
        _tiny_case("timm_convnext_atto", "timm_convnext",
                   _timm("convnext_atto", depths=(1, 1, 1, 1), dims=(4, 4, 4, 4), num_classes=3),
                   images(32, dtype=torch.float64),
                   "timm"),
        _tiny_case("gpt2", "gpt2", _tiny_hf("GPT2LMHeadModel", gpt2_config, _TINY_GPT2),
                   tokens(13, 6), "transformers"),
        _tiny_case("bert_base", "bert", _tiny_hf("BertModel", bert_config, _TINY_BERT),
                   tokens(13, 6), "transformers"),
        _tiny_case("llama_100m", "llama",
                   _tiny_hf("LlamaForCausalLM", llama_config, _TINY_LLAMA), tokens(13, 6),
                   "transformers", float32_inside=True),
        _tiny_case("lstm", "lstm", lambda: Recurrent("lstm", 3, 4, 2, 2),
                   sequences(3, 5, torch.float64)),
        _tiny_case("gru", "gru", lambda: Recurrent("gru", 3, 4, 2, 2),
                   sequences(3, 5, torch.float64)),
        # vocabulary 40, not 11: the output at each position depends on its token only,
        # so with 11 tokens the MLP (58 parameters) is a lookup table fitting 11 x 4 values
        # and ~40 of its directions are null on that finite input set, a property of the
        # data rather than a symmetry of the architecture (vocabulary 40 leaves none)
        _tiny_case("tied_lm", "tied", lambda: TiedLM(40, 4, 6), tokens(40, 5)),
        _tiny_case("groupnorm_cnn", "groupnorm", lambda: GroupNormCNN(4, 2, 2, 3), img8),
    ]


def _meta_llama(overrides: dict) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        with torch.device("meta"):
            return transformers.LlamaForCausalLM(llama_config(**overrides)).eval()

    return make


def _meta_tokens(length: int) -> Inputs:
    def draw(batch: int, gen: torch.Generator) -> tuple:
        return (torch.zeros(batch, length, dtype=torch.int64, device="meta"),)

    return draw


def meta_cases() -> list[Case]:
    """LLaMA-7B- and 70B-shaped models on the ``meta`` device (no weights allocated)."""
    return [
        Case("llama_7b_meta", "llama", _meta_llama(LLAMA_7B), _meta_tokens(16), "transformers",
             slow=True, verify=False),
        Case("llama_70b_meta", "llama", _meta_llama(LLAMA_70B), _meta_tokens(16),
             "transformers", slow=True, verify=False),
    ]
