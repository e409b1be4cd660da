"""Exporting searched networks: plain torch.nn equivalents, ONNX, onnxruntime."""

import numpy as np
import pytest
import torch

from fastnas import cli
from fastnas.export import export_onnx, to_plain
from fastnas.models import shufflenet_v1
from fastnas.ops import MultiDilationDWConv2d, ShuffleGConv1x1
from fastnas.spaces import CanasSpace
from fastnas.spaces import darts as D


def _assert_plain_equivalent(model, x):
    model.eval()
    plain = to_plain(model).eval()
    assert not any(isinstance(m, (ShuffleGConv1x1, MultiDilationDWConv2d)) for m in plain.modules())
    torch.testing.assert_close(plain(x), model(x), rtol=1e-4, atol=1e-5)


def test_to_plain_keeps_outputs():
    _assert_plain_equivalent(CanasSpace("cifar").build((4, 5, 6, 7, 0, 1, 2, 3) * 2), torch.randn(2, 3, 32, 32))
    _assert_plain_equivalent(shufflenet_v1(3, num_classes=10, variant="cifar"), torch.randn(2, 3, 32, 32))
    genotype = D.Genotype({**D.DARTS_V2.cells, "high_normal": D.DARTS_V1.cells["normal"]})
    _assert_plain_equivalent(D.NetworkCIFAR(8, 10, 6, False, genotype), torch.randn(2, 3, 32, 32))


def test_to_plain_refuses_search_supernets():
    with pytest.raises(ValueError, match="search-time MixedOp"):
        to_plain(CanasSpace("mnist").supernet())


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = CanasSpace("cifar").build((7, 6, 5, 4, 3, 2, 1, 0) * 2).eval()
    path = export_onnx(model, torch.zeros(1, 3, 32, 32), tmp_path / "canas.onnx")
    x = torch.randn(3, 3, 32, 32)  # another batch size than the example: the batch is dynamic
    (logits,) = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})
    np.testing.assert_allclose(logits, model(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_cli_export(tmp_path):
    pytest.importorskip("onnxruntime")
    chosen = tmp_path / "chosen.json"
    chosen.write_text('{"space": {"name": "canas", "variant": "mnist", "num_classes": 10, "width_mult": 1.0}, '
                      '"arch": [0, 1, 2, 3, 4, 5]}')
    assert cli.main(["export", "--arch", str(chosen), "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 1000
