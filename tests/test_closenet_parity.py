"""CloSe-Net reproduces the reference logits (1e-4), plain module and fast path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inference.checkpoints import load_checkpoint

_CASES_FILE = Path(__file__).resolve().parents[2] / "shared/fixtures/closenet_reference/cases.npz"


def _case_names() -> list[str]:
    """Every case in the fixture (NAME_logits keys); the known two if it is unreadable."""
    try:
        with np.load(_CASES_FILE) as data:
            return sorted(k[: -len("_logits")] for k in data.files if k.endswith("_logits"))
    except OSError:
        return ["batch2_n512", "small_n25"]


CASES = _case_names()


@pytest.fixture(scope="module")
def ckpt(closenet_reference):
    return load_checkpoint(closenet_reference / "closenet.pth")


@pytest.fixture(scope="module")
def cases(closenet_reference):
    with np.load(closenet_reference / "cases.npz") as data:
        return {k: data[k] for k in data.files}


def _inputs(cases, name):
    return (torch.from_numpy(cases[f"{name}_points"]),
            torch.from_numpy(cases[f"{name}_canon_pose_coords"]),
            torch.from_numpy(cases[f"{name}_garments"]))


def test_published_checkpoint_shape(ckpt):
    n_params = sum(p.numel() for p in ckpt.model.parameters() if p.requires_grad)
    assert n_params == 2_632_237
    assert not ckpt.model.training


@pytest.mark.parametrize("name", CASES)
def test_plain_module_matches_reference(ckpt, cases, name):
    with torch.inference_mode():
        logits = ckpt.model(*_inputs(cases, name)).numpy()
    ref = cases[f"{name}_logits"]
    assert logits.shape == ref.shape
    assert np.abs(logits - ref).max() < 1e-4
    np.testing.assert_array_equal(logits.argmax(1), cases[f"{name}_labels"])


@pytest.mark.parametrize("name", CASES)
def test_fused_path_matches_reference(ckpt, cases, name):
    from inference.fused import FusedCloseNet

    fused = FusedCloseNet(ckpt.model)
    with torch.inference_mode():
        logits = fused(*_inputs(cases, name)).transpose(1, 2).numpy()
    ref = cases[f"{name}_logits"]
    assert np.abs(logits - ref).max() < 1e-4
    np.testing.assert_array_equal(logits.argmax(1), cases[f"{name}_labels"])


def test_fold_bn_is_exact_in_eval():
    from inference.closenet import ConvBNAct
    from inference.fused import fold_bn

    torch.manual_seed(0)
    layer = ConvBNAct(8, 5, 1, 0.2)
    with torch.no_grad():
        layer.bn.running_mean.normal_()
        layer.bn.running_var.uniform_(0.5, 2.0)
        layer.bn.weight.normal_()
        layer.bn.bias.normal_()
    layer.eval()
    x = torch.randn(3, 8, 7)
    w, b = fold_bn(layer.conv.weight, layer.bn)
    expected = layer.bn(layer.conv(x))
    got = torch.einsum("oc,bcn->bon", w, x) + b[None, :, None]
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("dim", [3, 16])  # 3: the k-d tree, 16: the two-stage top-k
@pytest.mark.parametrize("n", [1, 25, 40, 319, 320, 1001, 2048])
def test_fast_knn_is_exact(n, dim):
    from inference.closenet import knn
    from inference.fused import knn_rows

    torch.manual_seed(n)
    x = torch.randn(n, dim, dtype=torch.float64)  # float64: no near-ties from rounding
    k = min(40, n)
    fast = knn_rows(x, k, tile=128).sort(-1).values
    plain = knn(x.t().unsqueeze(0), k)[0].sort(-1).values
    assert torch.equal(fast, plain)


@pytest.mark.parametrize("name", CASES)
def test_predictor_reproduces_reference_cases(ckpt, cases, name):
    """End to end: one sequential chunk per fixture cloud gives the reference logits."""
    from inference.predictor import Predictor

    points, canon = cases[f"{name}_points"], cases[f"{name}_canon_pose_coords"]
    n = points.shape[1]
    predictor = Predictor(ckpt.model, device="cpu", chunk_size=n)
    for b in range(points.shape[0]):
        pred = predictor.predict(points[b, :, :3], points[b, :, 3:6], points[b, :, 6:9],
                                 canon[b], cases[f"{name}_garments"][b], order="sequential")
        ref = cases[f"{name}_logits"][b].T
        assert np.abs(pred.logits - ref).max() < 1e-4
        np.testing.assert_array_equal(pred.labels, cases[f"{name}_labels"][b])
