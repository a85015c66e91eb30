"""CloSe-Net reproduces the reference logits (1e-4), plain module and fast path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.checkpoints import load_checkpoint

CASES = ("batch2_n512", "small_n25")


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
