"""The DARTS space, derivation, entropy, multi-level parameters, the search loop with
resume, the evaluation networks and the CLI."""

import json

import pytest
import torch

from fastnas import cli, data
from fastnas.flops import count
from fastnas.search.darts import DartsConfig, DartsSearch
from fastnas.spaces import darts as D


def test_published_genotypes_build_networks_of_the_published_size():
    # DARTS (Liu et al. 2019): the V2 CIFAR network (C=36, 20 cells) has 3.3M parameters
    # (3.349342M without the auxiliary head); the ImageNet network (C=48, 14 cells) 4.7M.
    cifar = D.NetworkCIFAR(36, 10, 20, True, D.DARTS_V2)
    assert D.count_parameters(cifar) == 3_349_342
    imagenet = D.NetworkImageNet(48, 1000, 14, True, D.DARTS_V2).eval()
    assert abs(D.count_parameters(imagenet) / 1e6 - 4.7) < 0.05
    # the mobile setting: under 600M multiply-adds at 224x224
    assert count(imagenet, torch.zeros(1, 3, 224, 224)).macs < 600e6


def test_eval_network_trains_with_auxiliary_head_and_drop_path():
    net = D.NetworkCIFAR(8, 10, 5, True, D.DARTS_V1, drop_path_prob=0.2)
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == aux.shape == (2, 10)
    (logits.sum() + aux.sum()).backward()
    assert net.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_derivation_on_hand_set_weights():
    weights = torch.full((14, 8), 0.01)
    idx = D.PRIMITIVES.index
    # node 0 (edges 0, 1): none is strongest on edge 0 but never chosen
    weights[0, idx("none")] = 0.9
    weights[0, idx("sep_conv_3x3")] = 0.5
    weights[1, idx("skip_connect")] = 0.3
    # node 1 (edges 2-4): edges from nodes 2 and 0 are the strongest two
    weights[2, idx("max_pool_3x3")] = 0.6
    weights[3, idx("avg_pool_3x3")] = 0.05
    weights[4, idx("dil_conv_5x5")] = 0.7
    # node 2 (edges 5-8) and node 3 (edges 9-13)
    weights[8, idx("sep_conv_5x5")] = 0.8
    weights[6, idx("dil_conv_3x3")] = 0.4
    weights[13, idx("skip_connect")] = 0.9
    weights[9, idx("avg_pool_3x3")] = 0.2
    cell = D.derive_cell(weights)
    assert cell[:2] == (("sep_conv_3x3", 0), ("skip_connect", 1))
    assert cell[2:4] == (("dil_conv_5x5", 2), ("max_pool_3x3", 0))
    assert cell[4:6] == (("sep_conv_5x5", 3), ("dil_conv_3x3", 1))
    assert cell[6:8] == (("skip_connect", 4), ("avg_pool_3x3", 0))
    assert all(op != "none" for op, _ in cell)


def test_architecture_entropy_value_and_gradient():
    a = torch.tensor([[0.0, 0.0], [2.0, 0.0]], requires_grad=True)
    p = torch.softmax(a, -1)
    expected = float(-(p * p.log()).sum().detach())
    entropy = D.architecture_entropy([a])
    assert float(entropy.detach()) == pytest.approx(expected)
    assert float(entropy.detach()) == pytest.approx(
        torch.log(torch.tensor(2.0)).item() + float(-(p[1] * p[1].log()).sum().detach()))
    entropy.backward()
    # uniform rows are the maximum: zero gradient there; the skewed row is pushed further apart
    torch.testing.assert_close(a.grad[0], torch.zeros(2))
    assert a.grad[1, 0] < 0 < a.grad[1, 1]


def test_genotype_json_round_trip_and_validation():
    assert D.Genotype.from_json(D.DARTS_V2.to_json()) == D.DARTS_V2
    with pytest.raises(ValueError, match="has 2 edges"):
        D.Genotype({"normal": (("sep_conv_3x3", 0), ("skip_connect", 1))})
    bad = json.loads(D.DARTS_V1.to_json())
    bad["cells"]["normal"][0] = ["sep_conv_3x3", 5]
    with pytest.raises(ValueError, match="reads node 5"):
        D.Genotype.from_json(json.dumps(bad))
    with pytest.raises(ValueError, match="malformed genotype JSON"):
        D.Genotype.from_json("{}")


def test_multilevel_keys_and_fused_plain_agreement():
    assert D.cell_keys(8, True) == ["low_normal", "low_normal", "low_reduce", "mid_normal", "mid_normal",
                                    "mid_reduce", "high_normal", "high_normal"]
    torch.manual_seed(0)
    fused = D.DartsSupernet(4, 10, 5, multilevel=True)
    plain = D.DartsSupernet(4, 10, 5, multilevel=True, fused=False)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 16, 16)
    fused.eval(), plain.eval()
    torch.testing.assert_close(fused(x), plain(x), rtol=1e-4, atol=1e-5)
    assert set(fused.alphas) == {"low_normal", "low_reduce", "mid_normal", "mid_reduce", "high_normal"}
    assert "alphas.low_normal" in fused.state_dict()


def test_fused_and_plain_supernets_agree_in_a_training_step():
    """Training mode (batch statistics, the fused batch_norm_mixed_op path): the loss,
    the gradients of weights and alphas, and every BN's running statistics after it."""
    torch.manual_seed(0)
    fused = D.DartsSupernet(4, 10, 5).double()
    plain = D.DartsSupernet(4, 10, 5, fused=False).double()
    plain.load_state_dict(fused.state_dict())
    x, y = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (4,))
    losses = [torch.nn.functional.cross_entropy(model(x), y) for model in (fused, plain)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[0], losses[1])
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    for (name, b), c in zip(fused.named_buffers(), plain.buffers()):
        torch.testing.assert_close(b, c, msg=name)


def _tiny(**overrides):
    options = dict(multilevel=True, channels=4, layers=5, epochs=2, steps_per_epoch=2, batch_size=16, eval_batches=1)
    options.update(overrides)
    return DartsConfig(**options)


def test_per_level_parameters_differ_when_the_levels_see_different_data(tmp_path):
    splits = data.load("digits")
    search = DartsSearch(_tiny(epochs=1), splits, tmp_path)
    before = {k: v.detach().clone() for k, v in search.model.alphas.items()}
    search.run()
    after = search.model.alphas
    moved = {k: after[k].detach() - before[k] for k in before}
    assert all(float(m.abs().max()) > 0 for m in moved.values())
    assert not torch.allclose(moved["low_normal"], moved["high_normal"])
    assert not torch.allclose(after["low_normal"], after["mid_normal"])


def test_second_order_step_runs_and_moves_alphas(tmp_path):
    splits = data.load("digits")
    search = DartsSearch(_tiny(second_order=True, epochs=1, steps_per_epoch=1), splits, tmp_path)
    before = torch.cat([a.detach().flatten() for a in search.model.arch_parameters()])
    search.step()
    after = torch.cat([a.detach().flatten() for a in search.model.arch_parameters()])
    assert float((after - before).abs().max()) > 0


def test_darts_search_resume_matches_uninterrupted(tmp_path):
    splits = data.load("digits")
    full = DartsSearch(_tiny(), splits, tmp_path / "full")
    full_genotype = full.run()

    class Killed(Exception):
        pass

    def kill(record):
        raise Killed

    partial = DartsSearch(_tiny(), splits, tmp_path / "resumed")
    with pytest.raises(Killed):
        partial.run(on_epoch=kill)
    resumed = DartsSearch(_tiny(), splits, tmp_path / "resumed")
    resumed.resume()
    assert resumed.epoch == 1
    assert resumed.run() == full_genotype
    assert resumed.history == full.history


def test_cli_darts_search_then_train(tmp_path, capsys):
    out = tmp_path / "darts"
    assert cli.main(["search", "--strategy", "darts-multilevel", "--out", str(out), "--epochs", "1",
                     "--steps-per-epoch", "1", "--channels", "4", "--layers", "5", "--batch-size", "16",
                     "--quiet"]) == 0
    for name in ("genotype.json", "history.json", "history.csv", "curves.png", "cells.png"):
        assert (out / name).exists(), name
    genotype = D.Genotype.from_json((out / "genotype.json").read_text())
    assert set(genotype.cells) == {"low_normal", "low_reduce", "mid_normal", "mid_reduce", "high_normal"}
    assert cli.main(["train", "--arch", str(out / "genotype.json"), "--epochs", "1", "--channels", "4",
                     "--layers", "3", "--batch-size", "64", "--out", str(tmp_path / "train"), "--quiet"]) == 0
    trained = json.loads((tmp_path / "train" / "train.json").read_text())
    assert 0.0 <= trained["test_accuracy"] <= 1.0
