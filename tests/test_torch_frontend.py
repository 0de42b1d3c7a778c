"""The torch.export importer: an imported model computes what the PyTorch module computes.

Each model is exported, imported into the IR and run in float (the float interpreter,
mcuprune.model.interpreter.run_f32) on the same inputs as torch; the outputs must agree to float32
rounding. Batch norm statistics are randomised first, so folding them into the convolutions is
actually exercised.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mcuprune.errors import UserError
from mcuprune.frontend.torch_export import import_exported, import_module, load_pt2
from mcuprune.model import ir
from mcuprune.model.interpreter import run_f32
from mcuprune.model.ir import FloatModel, Op
from mcuprune.train.archs import ARCHS, DSCNN, ResNet8, build_arch

ATOL = 1e-4

def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.numpy().transpose(0, 2, 3, 1) if x.ndim == 4 else x.numpy()


def _torch_out(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        y = module.eval()(x)
    return _nhwc(y).reshape(len(x), -1)


def _assert_same(model: FloatModel, module: nn.Module, x: torch.Tensor) -> None:
    ir.verify(model)
    got = run_f32(model, _nhwc(x))
    want = _torch_out(module, x)
    assert got.shape == want.shape
    assert np.allclose(got, want, atol=ATOL, rtol=1e-4), float(np.abs(got - want).max())


def _randomise_batch_norm(module: nn.Module, seed: int) -> nn.Module:
    """Batch norms far from the identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.25)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.3)
    return module.eval()


# --- a model with one of everything ----------------------------------------------------------


class Everything(nn.Module):
    """Batch norm, a depthwise conv (multiplier 2) with stride 2 and ReLU6, a residual add with a
    fused ReLU, zero padding folded into a conv, max pooling with padding and a ReLU after it,
    average pooling with count_include_pad=False and a clamp after it, a flattened map read by a linear layer (CHW vs
    HWC columns), global average pooling, an add of two vectors and a softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8)
        self.bn2 = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.bn3 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 3, stride=2)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16 * 3 * 3, 16)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu6(self.bn2(self.dw(x)))
        x = F.relu(self.bn3(self.pw(x)) + x)
        x = self.conv3(F.pad(x, (0, 1, 0, 1)))  # TF-style SAME for stride 2: extra row/column at the end
        x = F.relu(self.pool(x))
        a = self.gap(x).flatten(1)
        b = self.head(torch.flatten(self.avg(x).clamp(max=0.3), 1))
        y = F.relu(a + b)
        return torch.softmax(self.fc(self.dropout(y)), dim=-1)


@pytest.fixture(scope="module")
def everything() -> tuple[nn.Module, torch.export.ExportedProgram, torch.Tensor]:
    torch.manual_seed(0)
    module = _randomise_batch_norm(Everything(), seed=1)
    x = torch.randn(4, 3, 12, 12)
    ep = torch.export.export(module, (x[:1],))
    return module, ep, x


def test_everything_matches_torch(everything) -> None:
    module, ep, x = everything
    model = import_exported(ep, "everything")
    _assert_same(model, module, x)
    ops = [layer.op for layer in model.layers]
    # batch norms folded, the pad folded into conv3, the flatten implicit
    assert Op.PAD not in ops and Op.RESHAPE not in ops
    assert ops.count(Op.CONV2D) == 3 and ops.count(Op.DEPTHWISE_CONV2D) == 1 and ops.count(Op.ADD) == 2
    layers = {layer.name: layer for layer in model.layers}
    assert layers["dw"].depth_multiplier == 2 and layers["dw"].stride == (2, 2) and layers["dw"].clamp == ir.RELU6
    assert layers["conv3"].padding == (0, 1, 0, 1)
    assert layers["conv3"].clamp == ir.RELU  # the ReLU after the max pool, moved before it
    assert layers["pool"].padding == (1, 1, 1, 1) and layers["pool"].window == (3, 3)
    assert layers["avg"].clamp == (-np.inf, 0.3) and layers["avg"].padding == (1, 1, 1, 1)
    assert model.input_shape == (12, 12, 3) and model.num_classes == 5
    assert model.layers[-1].op is Op.SOFTMAX


def test_decomposed_graph_matches_torch(everything) -> None:
    """The core-ATen form (convolution, _native_batch_norm_legit_no_training, addmm, ...) imports the same."""
    module, ep, x = everything
    model = import_exported(ep.run_decompositions(), "everything")
    _assert_same(model, module, x)
    assert [layer.op for layer in model.layers] == [layer.op for layer in import_exported(ep, "e").layers]


def test_pt2_round_trip(everything, tmp_path) -> None:
    module, ep, x = everything
    path = tmp_path / "everything.pt2"
    torch.export.save(ep, path)
    model = load_pt2(path)
    assert model.name == "everything"
    _assert_same(model, module, x)


def test_mlp_on_feature_vectors() -> None:
    torch.manual_seed(2)
    module = nn.Sequential(nn.Linear(20, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4)).eval()
    _randomise_batch_norm(module, seed=3)
    x = torch.randn(5, 20)
    model = import_module(module, x[:1], "mlp")
    assert model.input_shape == (20,) and [layer.name for layer in model.layers] == ["linear_0", "linear_3"]
    assert [layer.op for layer in model.layers] == [Op.DENSE, Op.DENSE]
    _assert_same(model, module, x)


# --- the MLPerf Tiny networks ----------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("shape", [(28, 28, 1), (8, 8, 1)], ids=["28x28x1", "8x8x1"])
def test_archs_import_and_match(arch: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(4)
    module = _randomise_batch_norm(build_arch(arch, shape, 10), seed=5)
    x = torch.randn(2, shape[2], shape[0], shape[1])
    model = import_module(module, x[:1], arch)
    _assert_same(model, module, x)
    assert model.input_shape == shape and model.num_classes == 10
    ops = [layer.op for layer in model.layers]
    assert Op.MEAN in ops and ops[-1] is Op.DENSE
    names = {layer.name for layer in model.layers}
    if arch == "resnet8":
        assert isinstance(module, ResNet8)
        assert {"conv1", "stage2_shortcut", "stage3_add", "fc"} <= names and ops.count(Op.ADD) == 3
    else:
        assert isinstance(module, DSCNN)
        assert {"blocks_0_depthwise", "blocks_3_pointwise"} <= names and ops.count(Op.DEPTHWISE_CONV2D) == 4


# --- refusals: one line naming the op and the node -------------------------------------------


def _refusal(module: nn.Module, x: torch.Tensor) -> str:
    with pytest.raises(UserError) as info:
        import_module(module, x)
    message = str(info.value)
    assert "\n" not in message
    return message


class _Sigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def test_refuses_an_unsupported_op() -> None:
    message = _refusal(_Sigmoid(), torch.randn(1, 1, 8, 8))
    assert "aten.sigmoid.default" in message and "node 'sigmoid'" in message and "module act" in message
    assert "aten.conv2d.default" in message  # the list of what is supported


def test_refuses_grouped_conv() -> None:
    module = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2))
    message = _refusal(module, torch.randn(1, 4, 8, 8))
    assert "aten.conv2d.default" in message and "node 'conv2d'" in message and "groups=2" in message


def test_refuses_avgpool_counting_padding() -> None:
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AvgPool2d(3, stride=1, padding=1))
    message = _refusal(module, torch.randn(1, 1, 8, 8))
    assert "aten.avg_pool2d.default" in message and "node 'avg_pool2d'" in message
    assert "count_include_pad" in message and "in-bounds" in message


def test_refuses_batch_norm_not_after_a_conv() -> None:
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    message = _refusal(module, torch.randn(1, 1, 8, 8))
    assert "aten.batch_norm.default" in message and "node 'batch_norm'" in message


def test_refuses_a_relu_whose_input_has_other_readers() -> None:
    class TwoReaders(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return torch.relu(y) + y

    message = _refusal(TwoReaders(), torch.randn(1, 1, 8, 8))
    assert "aten.relu.default" in message and "node 'relu'" in message


def test_refuses_a_flattened_map_as_output() -> None:
    message = _refusal(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()), torch.randn(1, 1, 6, 6))
    assert "CHW" in message


def test_refuses_dynamic_shapes_and_two_inputs() -> None:
    module = nn.Sequential(nn.Conv2d(1, 4, 3)).eval()
    ep = torch.export.export(module, (torch.randn(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    with pytest.raises(UserError, match="dynamic shape"):
        import_exported(ep, "dynamic")

    class TwoInputs(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x + y

    ep = torch.export.export(TwoInputs(), (torch.randn(1, 3), torch.randn(1, 3)))
    with pytest.raises(UserError, match="takes 2 inputs"):
        import_exported(ep, "two")


def test_refuses_training_mode_export() -> None:
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).train()
    ep = torch.export.export(module, (torch.randn(1, 1, 8, 8),))
    with pytest.raises(UserError, match="eval"):
        import_exported(ep, "train")


def test_refuses_bad_pt2_files(everything, tmp_path) -> None:
    _, ep, _ = everything
    good = tmp_path / "good.pt2"
    torch.export.save(ep, good)
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    other = tmp_path / "model.onnx"
    other.write_bytes(b"not a model")
    for path, words in ((truncated, "cannot be read"), (tmp_path / "missing.pt2", "no such file"),
                        (other, "not a .pt2")):
        with pytest.raises(UserError) as info:
            load_pt2(path)
        assert words in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)
