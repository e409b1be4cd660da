"""The CLI: bad input to every command ends in one line naming what is wrong, never a
traceback; mixed precision and TensorBoard logging."""

import json
from pathlib import Path

import pytest
import torch

from fastnas import cli


@pytest.fixture
def files(tmp_path):
    inputs = {name: tmp_path / name for name in ("chosen.json", "wrong_shape.json", "wrong_space.json",
                                                  "not_json.json", "bad_genotype.json", "not_checkpoint.pt",
                                                  "no_state.pt", "other_weights.pt")}
    inputs["chosen.json"].write_text('{"space": {"name": "canas", "variant": "mnist", "num_classes": 10}, '
                                      '"arch": [0, 1, 2, 3, 4, 5]}')
    inputs["wrong_shape.json"].write_text('{"space": "canas", "arch": [99, 0, 0, 0, 0, 0]}')
    inputs["wrong_space.json"].write_text('{"space": {"name": "canas", "variant": "mnist", "num_classes": 10}, '
                                          '"arch": [99, 0, 0, 0, 0, 0]}')
    inputs["not_json.json"].write_text("{not json")
    inputs["bad_genotype.json"].write_text('{"cells": 3}')
    inputs["not_checkpoint.pt"].write_text("not a checkpoint")
    torch.save({"weights": 1}, inputs["no_state.pt"])
    torch.save({"state_dict": {"layer.weight": torch.zeros(3)}}, inputs["other_weights.pt"])
    return {path.stem: path for path in inputs.values()}


BAD = {
    "device tpu": (["search", "--device", "tpu"], "--device tpu"),
    "device meta": (["search", "--device", "meta"], "--device meta"),
    "device cuda without one": (["train", "--arch", "{chosen}", "--device", "cuda:7"], "--device cuda:7"),
    "arch of the wrong shape": (["train", "--arch", "{wrong_shape}"], "--arch"),
    "arch out of range": (["train", "--arch", "{wrong_space}"], "99"),
    "arch not JSON": (["train", "--arch", "{not_json}"], "not JSON"),
    "arch missing": (["train", "--arch", "{chosen}.missing"], "does not exist"),
    "genotype malformed": (["export", "--arch", "{bad_genotype}"], "genotype"),
    "weights not a checkpoint": (["export", "--arch", "{chosen}", "--weights", "{not_checkpoint}"],
                                 "not a checkpoint"),
    "weights without state": (["export", "--arch", "{chosen}", "--weights", "{no_state}"], "state_dict"),
    "weights of another network": (["export", "--arch", "{chosen}", "--weights", "{other_weights}"],
                                    "another network"),
    "weights missing": (["export", "--arch", "{chosen}", "--weights", "{chosen}.pt"], "does not exist"),
    "batch size 0": (["search", "--batch-size", "0"], "--batch-size"),
    "negative epochs": (["search", "--strategy", "darts", "--epochs", "-1"], "--epochs"),
    "width multiplier 0": (["search", "--width-mult", "0"], "--width-mult"),
    "negative resize": (["train", "--arch", "{chosen}", "--resize", "-5"], "--resize"),
    "period 0": (["search", "--period", "0"], "--period"),
    "negative alpha": (["search", "--alpha", "-1"], "--alpha"),
    "fast lambda out of range": (["search", "--fast-lambda", "2"], "lambda"),
    "steps not integers": (["search", "--steps", "1", "x", "1"], "--steps"),
    "budget 0": (["search", "--space", "nasbench201", "--budget", "0"], "--budget"),
    "repeats 0": (["search", "--space", "nasbench201", "--benchmark", "x.csv", "--repeats", "0"], "--repeats"),
    "learning rate 0": (["train", "--arch", "{chosen}", "--lr", "0"], "--lr"),
    "negative gamma": (["search", "--strategy", "darts-multilevel", "--gamma", "-1"], "--gamma"),
    "export channels 0": (["export", "--arch", "{chosen}", "--channels", "0"], "--channels"),
    "F range reversed": (["search", "--f-min", "5", "--f-max", "1"], "F_min"),
    "benchmark missing": (["search", "--space", "nasbench201", "--benchmark", "{chosen}.csv"], "does not exist"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_ends_in_one_line(name, files, tmp_path, capsys):
    argv, expected = BAD[name]
    argv = [a.format(**files) for a in argv] + ["--out", str(tmp_path / "out" / ("m.onnx" if argv[0] == "export"
                                                                                  else "run"))]
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("usage:")
             and not line.startswith("  ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert expected in lines[0], lines[0]


def test_tabular_search_under_torchrun_is_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["search", "--space", "nasbench201", "--out", str(tmp_path / "run")]) == 2
    assert "launch it as one process, without torchrun" in capsys.readouterr().err


def test_default_device_is_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli._device(None) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli._device(None) == torch.device("cpu")


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list(Path(log_dir).rglob("events.out.tfevents.*"))) == 1  # one run, one file
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {tag: [e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_search_and_train_with_amp_and_tensorboard(tmp_path, capsys):
    """--amp bf16 runs on the CPU too (torch's convolutions in bfloat16, the fastnas ops in
    float32); --tensorboard logs every step's loss, reward, FLOPs, accuracies and the
    controller's probabilities, and every training epoch."""
    pytest.importorskip("tensorboard")
    out, board = tmp_path / "search", tmp_path / "board"
    assert cli.main(["search", "--out", str(out), "--steps", "1", "1", "1", "--period", "2", "--child-steps", "2",
                     "--batch-size", "16", "--quiet", "--amp", "bf16", "--tensorboard", str(board)]) == 0
    scalars = _scalars(board)
    for tag in ("loss/train", "reward/mean", "flops/sampled_M", "flops/target_M", "accuracy/valid"):
        assert len(scalars[tag]) == 3, tag
    decision = [tag for tag in scalars if tag.startswith("controller/decision_0/")]
    assert len(decision) == 8  # one curve per choice of the first layer
    assert sum(scalars[tag][0] for tag in decision) == pytest.approx(1.0, abs=1e-5)
    assert json.loads((out / "results.json").read_text())["config"]["amp"] == "bf16"
    assert cli.main(["train", "--arch", str(out / "chosen.json"), "--epochs", "2", "--batch-size", "64", "--quiet",
                     "--amp", "bf16", "--out", str(tmp_path / "train"), "--tensorboard", str(tmp_path / "tb")]) == 0
    assert len(_scalars(tmp_path / "tb")["loss/train"]) == 2
    assert "device cpu" in capsys.readouterr().out


def test_darts_logs_its_architecture_weights(tmp_path):
    pytest.importorskip("tensorboard")
    board = tmp_path / "board"
    assert cli.main(["search", "--strategy", "darts", "--out", str(tmp_path / "darts"), "--epochs", "1",
                     "--steps-per-epoch", "2", "--channels", "4", "--layers", "3", "--batch-size", "8", "--quiet",
                     "--tensorboard", str(board)]) == 0
    scalars = _scalars(board)
    assert len(scalars["loss/train"]) == 2 and len(scalars["accuracy/supernet"]) == 1
    edge = [tag for tag in scalars if tag.startswith("alphas/normal/edge_0/")]
    assert len(edge) == 8  # one curve per op
    assert sum(scalars[tag][0] for tag in edge) == pytest.approx(1.0, abs=1e-5)
