"""The ``fastnas`` command: a thin layer over the library.

  fastnas search            CAS search on the bundled digits, scaled to minutes on a CPU
  fastnas search --strategy darts-multilevel   multi-level DARTS with the entropy regulariser
  fastnas search --space nasbench201 --benchmark nats_bench.csv   every strategy on a tabular benchmark
  fastnas train --arch runs/search/chosen.json   train the chosen architecture (or genotype.json)
  fastnas export --arch runs/search/chosen.json --weights runs/train/model.pt   ONNX for deployment
"""

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

from fastnas import data as data_module
from fastnas.precision import AMP_DTYPES
from fastnas.search.policies import STRATEGIES
DARTS_STRATEGIES = ("darts", "darts-multilevel")
TABULAR_SPACES = ("nasbench201", "nasbench_graph", "table")
from fastnas.search.rewards import CasSchedule

# Seed 000's F range is for its 224x224 space (cheapest network ~83M); other variants
# keep the same ratios to their own cheapest network.
PAPER_F_RANGE = (8e7, 1.2e8)
PAPER_FLOOR = 84.13e6
DEFAULT_VARIANT = {"digits": "mnist", "mnist": "mnist", "cifar10": "cifar", "cifar100": "cifar"}


def _number(kind, low, strict, name):
    """An argparse type: `kind` above `low` (strict) or at least `low`, else a one-line error."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"expected {name}, got {text}")
        return value
    return parse


POSITIVE_INT = _number(int, 0, True, "a positive integer")
COUNT = _number(int, 0, False, "an integer >= 0")
POSITIVE = _number(float, 0.0, True, "a number > 0")
NON_NEGATIVE = _number(float, 0.0, False, "a number >= 0")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES),
                        help="mixed precision: forward passes under torch.autocast in this dtype (CUDA; on the CPU "
                             "torch's convolutions run in it and the fastnas ops in float32)")
    parser.add_argument("--tensorboard", metavar="DIR",
                        help="log losses, rewards, FLOPs, accuracies and architecture probabilities for "
                             "TensorBoard (tensorboard --logdir DIR)")


def _tensorboard(args):
    from fastnas.tensorboard import TensorBoardLog

    return TensorBoardLog(_writable(args.tensorboard)) if args.tensorboard else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastnas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    s = commands.add_parser("search", help="run an architecture search")
    s.add_argument("--space", choices=("canas", "enas_chain") + TABULAR_SPACES, default="canas",
                   help="nasbench201 / nasbench_graph / table: strategies judged on a tabular benchmark")
    s.add_argument("--strategy", choices=STRATEGIES + DARTS_STRATEGIES,
                   help="default: cas (enas on --space enas_chain; on a table every strategy but DARTS)")
    s.add_argument("--dataset", choices=data_module.DATASETS, default="digits")
    s.add_argument("--data-root", help="folder holding (or receiving, with --download) the torchvision dataset")
    s.add_argument("--download", action="store_true", help="download the dataset into --data-root")
    s.add_argument("--variant", choices=("imagenet", "cifar", "mnist"),
                   help="CANAS input variant (default: from the dataset)")
    s.add_argument("--resize", type=POSITIVE_INT, help="upsample inputs bilinearly (224 as in seed 000)")
    s.add_argument("--width-mult", type=POSITIVE, default=1.0)
    s.add_argument("--steps", type=COUNT, nargs=3, metavar=("N_WARM", "N_SLOW", "N_FAST"),
                   help="CAS phase lengths (default 10 20 30 on the bundled digits, 50 50 200 otherwise)")
    s.add_argument("--period", type=POSITIVE_INT, help="CAS period T (default 10 on the digits, 50 otherwise)")
    s.add_argument("--f-min", type=POSITIVE, help="smallest target multiply-adds F_min")
    s.add_argument("--f-max", type=POSITIVE, help="largest target multiply-adds F_max")
    s.add_argument("--alpha", type=POSITIVE,
                   help="delta_anneal = (F_max - F_min) / (2 alpha) (default 2; 0.25 on --space nasbench201)")
    s.add_argument("--fast-lambda", type=float, default=0.8, help="lambda of the fast anneal, in (0, 1)")
    s.add_argument("--sms-target", type=POSITIVE,
                   help="F of the SMS reward (default F_max; on a table, the table's median FLOPs)")
    s.add_argument("--child-steps", type=POSITIVE_INT, help="shared-weight minibatches per step")
    s.add_argument("--controller-steps", type=POSITIVE_INT, default=1, help="controller updates per step")
    s.add_argument("--batch-size", type=POSITIVE_INT, help="default 128 (64 for DARTS)")
    c = s.add_argument_group("ENAS chain space (--space enas_chain, seed 003)")
    c.add_argument("--chain-channels", type=POSITIVE_INT, default=32)
    c.add_argument("--final-samples", type=POSITIVE_INT, default=10,
                   help="after the search, sample m architectures, keep the best on validation, fine-tune it")
    c.add_argument("--finetune-epochs", type=COUNT, default=2)
    d = s.add_argument_group("DARTS (--strategy darts / darts-multilevel)")
    d.add_argument("--epochs", type=POSITIVE_INT, help="search epochs (default 3 on the digits, 50 otherwise)")
    d.add_argument("--steps-per-epoch", type=POSITIVE_INT, help="default: one pass over S_train (10 on the digits)")
    d.add_argument("--channels", type=POSITIVE_INT, help="initial channels C (default 8 on the digits, 16 otherwise)")
    d.add_argument("--layers", type=POSITIVE_INT, help="cells (default 5 on the digits, 8 otherwise)")
    d.add_argument("--gamma", type=NON_NEGATIVE, help="weight of the architecture entropy (default 1 multi-level, 0 darts)")
    d.add_argument("--second-order", action="store_true", help="unrolled second-order DARTS")
    b = s.add_argument_group("tabular benchmarks (--space nasbench201 / nasbench_graph / table)")
    b.add_argument("--benchmark", help="the table: NAS-Bench-201's CSV, one's own CSV / JSON (--space table), or a "
                                       "NAS-Bench-Graph .bench file (default: the nas-bench-graph package's)")
    b.add_argument("--benchmark-dataset",
                   help="NAS-Bench-201: cifar10 (default), cifar100, imagenet16-120; NAS-Bench-Graph: cora (default), "
                        "citeseer, pubmed, cs, physics, photo, computers, arxiv")
    b.add_argument("--cost", choices=("latency", "params"), default="latency",
                   help="--space nasbench_graph: the cost the strategies minimise")
    b.add_argument("--graph-structure", default="0-1-2-3",
                   help="--space nasbench_graph: each node's input (0 the graph's), one of the product "
                        "structures 0-1-2-3 (the chain, default), 0-0-1-3, 0-1-1-2")
    b.add_argument("--arch-column", default="arch", help="--space table: column of the architectures (0-2-1)")
    b.add_argument("--accuracy-column", default="accuracy", help="--space table: column of the accuracies (%%)")
    b.add_argument("--flops-column", default="flops", help="--space table: column of the FLOPs")
    b.add_argument("--budget", type=POSITIVE_INT, default=500, help="distinct queries of the table per run")
    b.add_argument("--repeats", type=POSITIVE_INT, default=1,
                   help="run each strategy with seeds SEED..SEED+R-1; report mean, sd and a paired test")
    s.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    _add_run_options(s)
    s.add_argument("--out", default="runs/search", help="output directory")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--resume", action="store_true", help="continue the search saved in --out")
    s.add_argument("--plain", action="store_true", help="build the supernet on plain PyTorch ops")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    t = commands.add_parser("train", help="train a searched architecture from scratch")
    t.add_argument("--arch", required=True, help="chosen.json written by fastnas search")
    t.add_argument("--dataset", choices=data_module.DATASETS, default="digits")
    t.add_argument("--data-root")
    t.add_argument("--download", action="store_true")
    t.add_argument("--resize", type=POSITIVE_INT)
    t.add_argument("--epochs", type=POSITIVE_INT, help="default 300 (CANAS protocol) or 600 (DARTS protocol)")
    t.add_argument("--lr", type=POSITIVE, help="default 0.02 (CANAS) or 0.025 (DARTS)")
    t.add_argument("--batch-size", type=POSITIVE_INT, help="default 128 (CANAS) or 96 (DARTS)")
    t.add_argument("--channels", type=POSITIVE_INT, default=36, help="C of a DARTS evaluation network")
    t.add_argument("--layers", type=POSITIVE_INT, default=20, help="cells of a DARTS evaluation network")
    t.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    t.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: batch-norm statistics over the global batch (all ranks)")
    _add_run_options(t)
    t.add_argument("--out", default="runs/train")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true")
    e = commands.add_parser("export", help="export a searched (and trained) network to ONNX")
    e.add_argument("--arch", required=True, help="chosen.json or genotype.json")
    e.add_argument("--weights", help="model.pt written by fastnas train (default: untrained weights)")
    e.add_argument("--dataset", choices=data_module.DATASETS, default="digits",
                   help="sets the input shape and number of classes")
    e.add_argument("--channels", type=POSITIVE_INT, default=36)
    e.add_argument("--layers", type=POSITIVE_INT, default=20)
    e.add_argument("--device", help="device the network is traced on (default: cuda when available)")
    e.add_argument("--out", default="runs/model.onnx")
    return parser


INPUT_SHAPES = {"digits": (1, 28, 10), "mnist": (1, 28, 10), "cifar10": (3, 32, 10), "cifar100": (3, 32, 100)}


def _export(args) -> int:
    from fastnas.export import export_onnx
    from fastnas.train import load_model_spec, load_weights

    device = _device(args.device)
    spec = load_model_spec(args.arch, args.channels, args.layers)
    channels, size, classes = INPUT_SHAPES[args.dataset]
    model = spec.build(classes, channels)
    if args.weights:
        model.load_state_dict(load_weights(args.weights, model))
    out = Path(args.out)
    _writable(str(out.parent))
    export_onnx(model.to(device), torch.zeros(1, channels, size, size, device=device), out)
    print(f"exported {spec.description.splitlines()[0]} to {out} (plain torch.nn ops, dynamic batch; "
          f"traced on {device})")
    return 0


def _device(name: str | None) -> torch.device:
    """--device, defaulting to CUDA where there is a GPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: fastnas runs on cpu or cuda; use one of them")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                         f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def _writable(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"  # one per process: torchrun's ranks probe at once
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"--out {out}: cannot write there ({error.strerror}); choose another directory") from None
    return out


def _progress(total: int, initial: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=quiet, unit="step", dynamic_ncols=True)


def _search_weight_sharing(args) -> int:
    from fastnas.distributed import DistributedContext
    from fastnas.search import report
    from fastnas.search.weight_sharing import SearchConfig, WeightSharingSearch
    from fastnas.spaces.canas import CanasSpace
    from fastnas.spaces.enas_chain import EnasChainSpace
    from fastnas.train import TrainConfig

    distributed = DistributedContext.from_environment(_device(args.device))
    device = distributed.device
    main = distributed.is_main
    say = print if main else (lambda *a, **k: None)
    out = _writable(args.out)
    demo = args.dataset == "digits"
    strategy = args.strategy or ("enas" if args.space == "enas_chain" else "cas")
    in_channels, size, num_classes = INPUT_SHAPES[args.dataset]
    variant = args.variant or DEFAULT_VARIANT[args.dataset]
    if args.space == "canas":
        space = CanasSpace(variant, num_classes=num_classes, width_mult=args.width_mult)
        space_spec = {"name": "canas", "variant": variant, "num_classes": num_classes, "width_mult": args.width_mult}
        if variant == "imagenet" and args.width_mult == 1.0:
            f_min, f_max = PAPER_F_RANGE
        else:
            floor = space.flops(space.cheapest())
            f_min, f_max = (r / PAPER_FLOOR * floor for r in PAPER_F_RANGE)
        description = f"the CANAS space ({variant}, {len(space.decisions)} layers x 8 units)"
    else:
        space = EnasChainSpace(args.chain_channels, num_classes, in_channels, size)
        space_spec = {"name": "enas_chain", "channels": args.chain_channels, "num_classes": num_classes,
                      "in_channels": in_channels, "input_size": size}
        f_min, f_max = space.flops(space.cheapest()), space.flops(space.costliest())
        description = f"the ENAS chain space ({space.size():.1e} architectures)"
    f_min = args.f_min if args.f_min is not None else f_min
    f_max = args.f_max if args.f_max is not None else f_max
    steps = args.steps or ((10, 20, 30) if demo else (50, 50, 200))
    schedule = CasSchedule(f_min=f_min, f_max=f_max, period=args.period or (10 if demo else 50),
                           n_warm=steps[0], n_slow=steps[1], n_fast=steps[2],
                           anneal_alpha=args.alpha if args.alpha is not None else CasSchedule.anneal_alpha,
                           fast_lambda=args.fast_lambda)
    config = SearchConfig(
        space=args.space, strategy=strategy, dataset=args.dataset, variant=variant, width_mult=args.width_mult,
        resize=args.resize, schedule=schedule, sms_target=args.sms_target,
        child_steps=args.child_steps or 50, controller_steps=args.controller_steps,
        batch_size=args.batch_size or (64 if demo else 128), chain_channels=args.chain_channels, seed=args.seed,
        # the digits demo: shared weights trained far enough in 2 minutes that the front
        # ranks architectures (top of the front 92 % on seeds 1 and 2, 56 % at 10 steps of lr 0.05)
        child_lr=0.1 if demo else SearchConfig.child_lr, eval_batches=8 if demo else SearchConfig.eval_batches,
        amp=args.amp,
    )
    if not args.resume and (out / "checkpoint.pt").exists():
        raise ValueError(f"--out {out} already holds a search; pass --resume to continue it or choose another --out")
    splits = data_module.load(args.dataset, args.data_root, args.download)
    search = WeightSharingSearch(config, splits, out, device=device, fused=not args.plain, distributed=distributed)
    if args.resume:
        search.resume()
    elif main:
        (out / "records.jsonl").unlink(missing_ok=True)
    processes = f", {distributed.world_size} processes (global batch {config.batch_size})" if distributed.active else ""
    say(f"fastnas search: {strategy} over {description} on {args.dataset}, F in [{f_min / 1e6:.2f}M, "
        f"{f_max / 1e6:.2f}M], {schedule.total_steps} steps, device {device}{processes}, output {out}", flush=True)
    best = max((r["acc_valid"] for r in search.records), default=0.0)
    board = _tensorboard(args) if main else None
    with _progress(schedule.total_steps, search.step, args.quiet or not main) as bar:
        def on_step(record):
            nonlocal best
            best = max(best, record["acc_valid"])
            if board:
                board.search_step(record, search.policy.choice_probabilities())
            target = record["target_flops"]
            bar.set_postfix(phase=record["phase"], F="-" if target is None else f"{target / 1e6:.2f}M",
                            reward=f"{record['reward']:.3f}", best=f"{100 * best:.1f}%", refresh=False)
            bar.update(1)

        records = search.run(on_step)
    if board:
        board.close()
    scored = search.final_scores()
    if main:
        chosen = report.write_results(out, records, scored, config.to_dict(), space_spec, (f_min, f_max))
        say(report.summary(scored, chosen, out))
    if args.space == "enas_chain" and args.final_samples > 0:
        final = search.select_and_finetune(args.final_samples, TrainConfig(epochs=args.finetune_epochs))
        network = final.pop("network")
        if main:
            torch.save({"arch": final["arch"], "state_dict": network.state_dict()}, out / "final_model.pt")
            (out / "final.json").write_text(json.dumps({"space": space_spec, **final}, indent=1))
        say(f"final step: best of {final['candidates']} sampled architectures on validation "
            f"({100 * final['acc_valid_shared']:.1f}% with shared weights), fine-tuned {args.finetune_epochs} "
            f"epochs: test {100 * final['test_accuracy']:.1f}%, {final['flops'] / 1e6:.2f}M MACs\n"
            f"  {final['encoding']}\n  saved final.json and final_model.pt")
    return 0


def _search_darts(args) -> int:
    from fastnas.distributed import DistributedContext
    from fastnas.search import report
    from fastnas.search.darts import DartsConfig, DartsSearch
    from fastnas.spaces.darts import PRIMITIVES

    distributed = DistributedContext.from_environment(_device(args.device))
    device = distributed.device
    main = distributed.is_main
    say = print if main else (lambda *a, **k: None)
    out = _writable(args.out)
    if not args.resume and (out / "checkpoint.pt").exists():
        raise ValueError(f"--out {out} already holds a search; pass --resume to continue it or choose another --out")
    demo = args.dataset == "digits"
    multilevel = args.strategy == "darts-multilevel"
    config = DartsConfig(
        multilevel=multilevel, dataset=args.dataset,
        channels=args.channels or (8 if demo else 16), layers=args.layers or (5 if demo else 8),
        epochs=args.epochs or (3 if demo else 50),
        steps_per_epoch=args.steps_per_epoch or (10 if demo else None),
        batch_size=args.batch_size or 64,
        gamma=args.gamma if args.gamma is not None else (1.0 if multilevel else 0.0),
        second_order=args.second_order, amp=args.amp, seed=args.seed,
    )
    config.validate()
    splits = data_module.load(args.dataset, args.data_root, args.download)
    search = DartsSearch(config, splits, out, device=device, fused=not args.plain, distributed=distributed)
    if args.resume:
        search.resume()
    processes = f", {distributed.world_size} processes (global batch {config.batch_size})" if distributed.active else ""
    say(f"fastnas search: {'multi-level ' if multilevel else ''}DARTS ({'second' if config.second_order else 'first'}"
        f" order, gamma={config.gamma}) on {args.dataset}: {config.layers} cells, C={config.channels}, "
        f"{config.epochs} epochs x {search.steps_per_epoch} steps, device {device}{processes}, output {out}",
        flush=True)
    board = _tensorboard(args) if main else None
    with _progress(config.epochs * search.steps_per_epoch, search.epoch * search.steps_per_epoch,
                   args.quiet or not main) as bar:
        def on_step(i, loss):
            bar.set_postfix(epoch=search.epoch + 1, loss=f"{loss:.3f}", refresh=False)
            bar.update(1)
            if board:
                board.darts_step(search.epoch * search.steps_per_epoch + i, loss)

        def on_epoch(record):
            if board:
                board.darts_epoch(record, dict(search.model.alphas), PRIMITIVES)
            skips = " ".join(f"{k}={v}" for k, v in record["skip_connect"].items())
            if main:
                bar.write(f"epoch {record['epoch']}: loss {record['train_loss']:.3f}, supernet accuracy "
                          f"{100 * record['supernet_accuracy']:.1f}%, entropy {record['entropy']:.2f}, "
                          f"skip_connect {skips}")

        genotype = search.run(on_step, on_epoch)
    if not main:
        return 0
    if board:
        board.close()
    report.write_darts_results(out, search.history, genotype, config.to_dict())
    print(f"derived genotype:\n{genotype}\nresults in {out}: genotype.json, history.json/.csv, curves.png, cells.png "
          f"(train it: fastnas train --arch {out / 'genotype.json'})")
    return 0


def _search_tabular(args) -> int:
    from fastnas.search.policies import REINFORCE_STRATEGIES
    from fastnas.search.tabular import (TABULAR_SAMPLES_PER_STEP, TOP_ARCHITECTURES, compare_strategies,
                                        comparison_table, default_tabular_schedule, ratio_without_the_best)
    from fastnas.spaces.nasbench201 import nasbench201_benchmark
    from fastnas.spaces.nasbench_graph import nasbench_graph_benchmark
    from fastnas.spaces.tabular import TabularBenchmark

    if not args.benchmark and args.space != "nasbench_graph":
        example = "the NAS-Bench-201 CSV, e.g. nats_bench.csv" if args.space == "nasbench201" else "a CSV or JSON table"
        raise ValueError(f"--space {args.space} needs --benchmark PATH ({example})")
    if args.strategy in DARTS_STRATEGIES:
        raise ValueError(f"--space {args.space} runs the sampling strategies ({', '.join(STRATEGIES)}), not DARTS")
    out = _writable(args.out)
    if args.space == "nasbench201":
        benchmark = nasbench201_benchmark(args.benchmark, args.benchmark_dataset or "cifar10")
    elif args.space == "nasbench_graph":
        benchmark = nasbench_graph_benchmark(args.benchmark_dataset or "cora", args.cost, args.benchmark,
                                             args.graph_structure)
    else:
        benchmark = TabularBenchmark.from_file(args.benchmark, args.arch_column, args.accuracy_column,
                                               args.flops_column)
    overrides = {field: value for field, value in (("f_min", args.f_min), ("f_max", args.f_max),
                                                   ("anneal_alpha", args.alpha), ("fast_lambda", args.fast_lambda))
                 if value is not None}
    schedule = dataclasses.replace(default_tabular_schedule(benchmark, args.budget, TABULAR_SAMPLES_PER_STEP),
                                   **overrides)
    strategies = STRATEGIES if args.strategy is None else tuple(dict.fromkeys((args.strategy, "random")))
    if args.strategy is None and not benchmark.complete:
        strategies = tuple(s for s in strategies if s not in REINFORCE_STRATEGIES)
        print(f"{benchmark.name} holds {len(benchmark)} of the {benchmark.space.size()} architectures of its space; "
              f"{', '.join(REINFORCE_STRATEGIES)} sample the whole space, so they are left out", flush=True)
    seeds = range(args.seed, args.seed + args.repeats)
    print(f"{benchmark.name}: {', '.join(strategies)} with {args.budget} queries each "
          f"({100 * args.budget / len(benchmark):.1f}% of {len(benchmark)}), seeds {seeds.start}..{seeds.stop - 1}",
          flush=True)
    comparisons = compare_strategies(benchmark, strategies, args.budget, seeds, schedule, args.sms_target)
    print("hypervolume ratio (found front / true front):")
    print(comparison_table(comparisons))
    print(f"(without its {TOP_ARCHITECTURES} most accurate architectures the true front keeps "
          f"{ratio_without_the_best(benchmark, TOP_ARCHITECTURES):.3f} of its hypervolume)")
    (out / "tabular.json").write_text(json.dumps({
        c.strategy: [{"seed": seed, "queries": r.queries, "hypervolume_ratio": r.hypervolume_ratio,
                      "queried": [{"arch": list(a), "encoding": benchmark.space.encode(a), "flops": f,
                                   "accuracy": acc} for a, (f, acc) in r.queried.items()]}
                     for seed, r in zip(c.seeds, c.runs)]
        for c in comparisons}, indent=1))
    print(f"results in {out / 'tabular.json'}")
    return 0


def _train(args) -> int:
    from fastnas.distributed import DistributedContext, sync_batch_norm
    from fastnas.train import DARTS_TRAIN, TrainConfig, load_model_spec, train_network

    distributed = DistributedContext.from_environment(_device(args.device))
    device = distributed.device
    out = _writable(args.out)
    spec = load_model_spec(args.arch, args.channels, args.layers)
    options = dict(DARTS_TRAIN) if spec.is_genotype else {}
    options.update({k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("batch_size", args.batch_size))
                    if v is not None})
    config = TrainConfig(resize=args.resize, amp=args.amp, seed=args.seed, **options)
    splits = data_module.load(args.dataset, args.data_root, args.download)
    model = spec.build(splits.num_classes, splits.in_channels)
    if args.sync_bn:
        sync_batch_norm(model)
    say = print if distributed.is_main else (lambda *a, **k: None)
    processes = f", {distributed.world_size} processes (global batch {config.batch_size})" if distributed.active else ""
    say(f"fastnas train: {spec.description}\non {args.dataset} for {config.epochs} epochs, device {device}{processes}",
        flush=True)
    with _progress(config.epochs, 0, args.quiet or not distributed.is_main) as bar:
        board = _tensorboard(args) if distributed.is_main else None

        def on_epoch(entry):
            bar.set_postfix(loss=f"{entry['loss']:.3f}", lr=f"{entry['lr']:.4f}", refresh=False)
            bar.update(1)
            if board:
                board.train_epoch(entry)

        result = train_network(model, splits, config, device, on_epoch, distributed)
        if board:
            board.close()
    if distributed.is_main:
        torch.save({"arch": str(args.arch), "state_dict": model.state_dict()}, out / "model.pt")
        (out / "train.json").write_text(json.dumps({"arch": str(args.arch), **result}, indent=1))
    say(f"test accuracy {100 * result['test_accuracy']:.2f}%, {result['flops'] / 1e6:.2f}M MACs, "
        f"{result['params'] / 1e6:.3f}M params; model in {out / 'model.pt'}")
    return 0


def _dispatch(args) -> int:
    if args.command == "train":
        return _train(args)
    if args.command == "export":
        return _export(args)
    distributed_launch = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.space in TABULAR_SPACES:
        if distributed_launch:
            raise ValueError("the tabular search looks accuracies up in a table and trains nothing: launch it "
                             "as one process, without torchrun")
        return _search_tabular(args)
    if args.strategy in DARTS_STRATEGIES:
        return _search_darts(args)
    return _search_weight_sharing(args)


def main(argv: list[str] | None = None) -> int:
    from fastnas.distributed import end_process_group

    args = _parser().parse_args(argv)
    code = 1
    try:
        code = _dispatch(args)
        return code
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"fastnas: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastnas: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a one-line report, not a traceback; FASTNAS_DEBUG=1 shows it
        if os.environ.get("FASTNAS_DEBUG"):
            raise
        print(f"fastnas: error: {type(error).__name__}: {error} (FASTNAS_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
    finally:
        end_process_group(completed=code == 0)


if __name__ == "__main__":
    sys.exit(main())
