"""Bad input to every command ends in one line naming what is wrong, never a traceback."""

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


def test_default_device_is_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli._device(None) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli._device(None) == torch.device("cpu")
