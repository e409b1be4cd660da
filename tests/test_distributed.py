"""Data-parallel training on torch.distributed (gloo, 2 CPU processes): N ranks x B/N give
the update of one process with batch B, rank 0 alone writes, torchrun launches the CLI."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fastnas import data as data_module
from fastnas.distributed import DistributedContext, end_process_group, sync_batch_norm
from fastnas.spaces.canas import CanasSpace
from fastnas.train import TrainConfig, train_network

ARCH = (0, 1, 2, 3, 4, 5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(function, world_size: int, *args, threads: int = 1):
    """`function(*args)` in `world_size` processes set up as torchrun would."""
    port = _free_port()
    mp.start_processes(_rank_main, args=(world_size, port, threads, function, args), nprocs=world_size, join=True,
                       start_method="spawn")


def _reference(function, *args):
    """`function(*args)` in one process on 2 threads, which split a batch's reductions as 2
    ranks do: the single process to compare 2 ranks with."""
    _run_ranks(function, 1, *args, threads=2)


def _rank_main(rank, world_size, port, threads, function, args):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    completed = False
    try:
        function(*args)
        completed = True
    finally:
        end_process_group(completed)


def _first_step_gradients(path):
    """One float64 step of a CANAS network with synchronised batch norm on this rank's
    share of a global batch of 64; rank 0 saves the loss and the averaged gradients."""
    distributed = DistributedContext.from_environment(torch.device("cpu"))
    torch.manual_seed(0)
    model = sync_batch_norm(CanasSpace("mnist", num_classes=10).build(ARCH)).double().train()
    splits = data_module.load("digits", None, False)
    x, y = data_module.BatchLoader(splits.train, splits.name, 64, "cpu", augment=True, seed=0).next()
    x, y = distributed.shard(x.double(), y)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    sent = distributed.average_gradients(model.parameters())
    if distributed.is_main:
        torch.save({"loss": distributed.sum(float(loss)) / distributed.world_size, "sent": sent,
                    "grads": {n: p.grad for n, p in model.named_parameters()},
                    "buffers": {n: b for n, b in model.named_buffers()}}, path)
    else:
        distributed.sum(float(loss))


def test_two_ranks_give_the_gradient_of_the_global_batch(tmp_path):
    _first_step_gradients(tmp_path / "one.pt")
    _run_ranks(_first_step_gradients, 2, tmp_path / "two.pt")
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-12)
    for name, grad in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-9, atol=1e-12, msg=name)
    for name, buffer in one["buffers"].items():  # running statistics over the global batch
        torch.testing.assert_close(two["buffers"][name], buffer, rtol=1e-9, atol=1e-12, msg=name)
    assert one["sent"] == 0
    assert two["sent"] == 8 * sum(g.numel() for g in one["grads"].values())


class _InFloat64(torch.nn.Module):
    def forward(self, x):
        return x.double()


def _train(path):
    """Two epochs of fastnas.train in float64: in float32 the two ways of splitting the
    batch's reductions drift apart by an amount that depends on the CPU's kernels (1e-4
    of the loss on an AVX-512 machine), in float64 by about 1e-15."""
    distributed = DistributedContext.from_environment(torch.device("cpu"))
    torch.manual_seed(0)
    model = sync_batch_norm(torch.nn.Sequential(_InFloat64(), CanasSpace("mnist", num_classes=10).build(ARCH).double()))
    splits = data_module.load("digits", None, False)
    splits = dataclasses.replace(splits, train=data_module.ImageSplit(splits.train.images[:448],
                                                                       splits.train.labels[:448]),
                                 valid=data_module.ImageSplit(splits.valid.images[:64], splits.valid.labels[:64]))
    result = train_network(model, splits, TrainConfig(epochs=2, batch_size=64), "cpu", distributed=distributed)
    if distributed.is_main:
        path.write_text(json.dumps({k: result[k] for k in ("history", "test_accuracy", "processes")}))


def test_training_on_two_ranks_follows_one_process(tmp_path):
    _reference(_train, tmp_path / "one.json")
    _run_ranks(_train, 2, tmp_path / "two.json")
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["processes"] == 2
    for a, b in zip(one["history"], two["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-9)
    assert two["test_accuracy"] == one["test_accuracy"]


def test_a_batch_that_does_not_split_is_refused():
    distributed = DistributedContext(rank=0, world_size=3)
    with pytest.raises(ValueError, match="does not split over 3 ranks"):
        distributed.shard(torch.zeros(64, 1))


def test_torchrun_launches_fastnas_train(tmp_path):
    chosen = tmp_path / "chosen.json"
    chosen.write_text(json.dumps({"space": {"name": "canas", "variant": "mnist", "num_classes": 10},
                                  "arch": list(ARCH)}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "fastnas", "train", "--arch", str(chosen), "--epochs", "1", "--batch-size", "64", "--sync-bn",
               "--device", "cpu", "--quiet", "--out", str(tmp_path / "train")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, [line for line in done.stderr.splitlines() if "fastnas: error" in line]
    assert done.stdout.count("test accuracy") == 1  # rank 0 alone reports
    assert "2 processes (global batch 64)" in done.stdout
    result = json.loads((tmp_path / "train" / "train.json").read_text())
    assert result["processes"] == 2 and result["allreduce_bytes_per_step"] > 0


def test_one_process_under_torchrun_is_the_plain_run(tmp_path):
    """torchrun --nproc_per_node 1 sets WORLD_SIZE=1: fastnas then makes no process group
    and no collective, so a DARTS search is the plain run, step for step (the 1-GPU speed
    check of a data-parallel launch compares identical code)."""
    flags = ["-m", "fastnas", "search", "--strategy", "darts", "--epochs", "1", "--steps-per-epoch", "2",
             "--channels", "4", "--layers", "3", "--device", "cpu", "--quiet", "--out"]
    plain = subprocess.run([sys.executable, *flags, str(tmp_path / "plain")], capture_output=True, text=True,
                           timeout=300)
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                               *flags, str(tmp_path / "torchrun")], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and launched.returncode == 0, (plain.stderr[-1000:], launched.stderr[-1000:])
    history = [json.loads((tmp_path / run / "history.json").read_text())["history"] for run in ("plain", "torchrun")]
    assert history[0] == history[1] and history[0][0]["allreduce_bytes_per_step"] == 0
    assert DistributedContext.from_environment(torch.device("cpu")).active is False and not dist.is_initialized()


def _search_config():
    from fastnas.search.rewards import CasSchedule
    from fastnas.search.weight_sharing import SearchConfig

    space = CanasSpace("mnist", num_classes=10)
    schedule = CasSchedule(f_min=space.flops(space.cheapest()), f_max=2 * space.flops(space.cheapest()), period=2,
                           n_warm=1, n_slow=1, n_fast=1)
    return SearchConfig(schedule=schedule, child_steps=2, batch_size=32, eval_batches=2)


def _search(out, path):
    from fastnas.search.weight_sharing import WeightSharingSearch

    distributed = DistributedContext.from_environment(torch.device("cpu"))
    search = WeightSharingSearch(_search_config(), data_module.load("digits", None, False), out,
                                 distributed=distributed)
    records = search.run()
    scored = search.final_scores()
    if distributed.is_main:
        torch.save({"records": records, "scored": scored, "policy": search.policy.state_dict()}, path)


def test_weight_sharing_search_on_two_ranks_matches_one_process(tmp_path):
    """2 ranks x 16 images give the records of 1 process x 32: the same paths and sampled
    architectures, the same accuracies and controller; rank 0 alone writes."""
    _reference(_search, tmp_path / "one", tmp_path / "one.pt")
    _run_ranks(_search, 2, tmp_path / "two", tmp_path / "two.pt")
    one, two = torch.load(tmp_path / "one.pt", weights_only=False), torch.load(tmp_path / "two.pt", weights_only=False)
    assert len(two["records"]) == len(one["records"]) == 3
    for a, b in zip(one["records"] + one["scored"], two["records"] + two["scored"]):
        assert b["arch"] == a["arch"]
        assert b["acc_valid"] == pytest.approx(a["acc_valid"], abs=1e-5)
        assert b["acc_test"] == pytest.approx(a["acc_test"], abs=1e-5)
    for a, b in zip(one["records"], two["records"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["reward"] == pytest.approx(a["reward"], rel=1e-5)
        assert a["allreduce_bytes"] == 0 and b["allreduce_bytes"] > 0
    for name, value in one["policy"]["controller"].items():
        torch.testing.assert_close(two["policy"]["controller"][name], value, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "two" / "checkpoint.pt").exists()
    written = (tmp_path / "two" / "records.jsonl").read_text().splitlines()
    assert len(written) == 3  # one writer


def _darts(second_order, out, path):
    from fastnas.search.darts import DartsConfig, DartsSearch

    # float64: the second-order step's finite difference and Adam's normalisation magnify
    # float32 rounding (1 process vs 2 ranks differ by 2 % of the alphas after 4 steps)
    torch.set_default_dtype(torch.float64)
    distributed = DistributedContext.from_environment(torch.device("cpu"))
    config = DartsConfig(multilevel=not second_order, channels=4, layers=3, epochs=2, steps_per_epoch=2,
                         batch_size=16, eval_batches=1, second_order=second_order, gamma=0.0 if second_order else 1.0)
    search = DartsSearch(config, data_module.load("digits", None, False), out, distributed=distributed)
    genotype = search.run()
    if distributed.is_main:
        torch.save({"history": search.history, "genotype": genotype.to_json(),
                    "alphas": {k: a.detach() for k, a in search.model.alphas.items()},
                    "weights": {n: p.detach() for n, p in search.model.named_parameters()}}, path)


@pytest.mark.parametrize("second_order", [False, True], ids=["multilevel-first-order", "darts-second-order"])
def test_darts_on_two_ranks_matches_one_process(tmp_path, second_order):
    """2 ranks x 8 images make the updates of 1 process x 16: batch norm over both ranks,
    architecture and weight gradients (the unrolled step's three too) averaged."""
    _reference(_darts, second_order, tmp_path / "one", tmp_path / "one.pt")
    _run_ranks(_darts, 2, second_order, tmp_path / "two", tmp_path / "two.pt")
    one, two = torch.load(tmp_path / "one.pt", weights_only=False), torch.load(tmp_path / "two.pt", weights_only=False)
    for name, alpha in one["alphas"].items():
        assert not torch.equal(alpha, torch.zeros_like(alpha)) or second_order  # the search moved them
        torch.testing.assert_close(two["alphas"][name], alpha, rtol=1e-9, atol=1e-12, msg=name)
    for name, weight in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], weight, rtol=1e-9, atol=1e-12, msg=name)
    assert two["genotype"] == one["genotype"]
    for a, b in zip(one["history"], two["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-10)
        assert b["supernet_accuracy"] == pytest.approx(a["supernet_accuracy"], abs=1e-9)
        assert a["allreduce_bytes_per_step"] == 0 and b["allreduce_bytes_per_step"] > 0
    assert (tmp_path / "two" / "checkpoint.pt").exists()


def test_resume_with_another_number_of_processes_is_refused(tmp_path):
    from fastnas.search.weight_sharing import WeightSharingSearch

    _search(tmp_path / "run", tmp_path / "one.pt")
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["world_size"] == 1
    state["world_size"] = 2
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    search = WeightSharingSearch(_search_config(), data_module.load("digits", None, False), tmp_path / "run")
    with pytest.raises(ValueError, match=r"ran on 2 process\(es\), this launch has 1"):
        search.resume()


def test_sync_batch_norm_keeps_parameters_and_dtype():
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3)).double()
    model[0].running_mean.fill_(0.5)
    synced = sync_batch_norm(model)[0]
    assert type(synced).__name__ == "SyncBatchNorm2d" and synced.weight.dtype == torch.float64
    assert torch.equal(synced.running_mean, torch.full((3,), 0.5, dtype=torch.float64))


def _rank_processes(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the worker processes torchrun started."""
    ranks = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/environ", "rb") as f:
                environment = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        except (OSError, ValueError, IndexError):
            continue
        if parent == launcher_pid and b"RANK" in environment:
            ranks[int(environment[b"RANK"])] = int(entry)
    return ranks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")
def test_a_killed_rank_ends_the_search_and_resume_completes_it(tmp_path):
    """Rank 1 killed mid-search: the job ends (no hang) with the failure named; --resume
    on 2 processes then ends with the records of an uninterrupted 2-process search."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "--max-restarts", "0", "-m", "fastnas", "search", "--steps", "1", "2", "3", "--period", "2",
              "--child-steps", "2", "--batch-size", "32", "--device", "cpu", "--quiet", "--out"]
    uninterrupted = subprocess.run(launch + [str(tmp_path / "full")], capture_output=True, text=True, timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]

    out = tmp_path / "killed"
    job = subprocess.Popen(launch + [str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = out / "records.jsonl"
        while not (log.exists() and len(log.read_text().splitlines()) >= 2):
            assert job.poll() is None, job.communicate()[1][-2000:]
            time.sleep(0.2)
        os.kill(_rank_processes(job.pid)[1], signal.SIGKILL)
        _, stderr = job.communicate(timeout=120)  # ends, does not hang on the dead peer
    finally:
        job.kill()
    assert job.returncode != 0
    assert "exitcode  : -9" in stderr and "Signal 9 (SIGKILL)" in stderr  # torchrun names the killed rank
    done_before = len(log.read_text().splitlines())
    assert 2 <= done_before < 6

    resumed = subprocess.run(launch + [str(out), "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    again = json.loads((out / "results.json").read_text())
    assert again["records"] == full["records"] and again["chosen"] == full["chosen"]
    assert log.read_text() == (tmp_path / "full" / "records.jsonl").read_text()
