"""Population strategies, the paired test, and tables brought by the user."""

import importlib.util
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from fastnas import cli
from fastnas.search.bayesian import BayesianParetoSearch
from fastnas.search.evolution import AgingEvolution, Nsga2
from fastnas.search.pareto import crowding_distances, nondominated_ranks
from fastnas.search.policies import population_options
from fastnas.search.significance import wilcoxon_signed_rank
from fastnas.search.tabular import (anytime_hypervolume_ratios, compare_strategies, default_sms_target,
                                    ratio_without_the_best, tabular_search, true_front_reference)
from fastnas.spaces.nasbench201 import nasbench201_benchmark
from fastnas.spaces.nasbench_graph import OPS as GRAPH_OPS, bench_file, nasbench_graph_benchmark
from fastnas.spaces.tabular import TableSpace, TabularBenchmark, parse_architecture

ROOT = Path(__file__).resolve().parents[1]
NATS_CSV = ROOT.parent / "shared" / "data" / "nasbench201" / "nats_bench.csv"
needs_nats = pytest.mark.skipif(not NATS_CSV.exists(), reason="shared NAS-Bench-201 table not present")
needs_graph = pytest.mark.skipif(importlib.util.find_spec("nas_bench_graph") is None,
                                 reason="nas-bench-graph is not installed")


def synthetic_table(layers: int = 5, choices: int = 3) -> TabularBenchmark:
    """Every architecture of a small macro space: FLOPs grow with the choices, accuracy
    saturates with them, with a layer-dependent twist so the front is not a line."""
    accuracy, flops = {}, {}
    for index in range(choices ** layers):
        arch = tuple(index // choices ** i % choices for i in range(layers))
        flops[arch] = sum((c + 1) ** 2 * (i + 1) for i, c in enumerate(arch)) * 1e6
        accuracy[arch] = 60 + sum(10 * (1 - 0.5 ** c) / (1 + (i % 2)) for i, c in enumerate(arch))
    return TabularBenchmark.from_records(TableSpace([choices] * layers, flops), accuracy, name="synthetic")


# ---- Pareto helpers and the paired test ----------------------------------------------
def test_nondominated_ranks_and_crowding_distances():
    points = [(1, 5), (2, 3), (3, 1), (2, 5), (4, 4), (5, 5)]
    assert nondominated_ranks(points) == [0, 0, 0, 1, 1, 2]
    # The front's ends are kept whatever their spacing; the middle gets the neighbours' gap.
    assert crowding_distances([(1, 5), (2, 3), (3, 1)]) == [float("inf"), 2 / 2 + 4 / 4, float("inf")]


def test_wilcoxon_signed_rank_is_exact():
    # Ranks 1..5, positive sum 13: 3 of the 32 sign patterns sum to <= 2, so p = 2 * 3/32.
    assert wilcoxon_signed_rank([1, -2, 3, 4, 5]) == 6 / 32
    assert wilcoxon_signed_rank([0.1] * 10) == 2 / 1024  # every seed won
    # Ties share rank 1.5: positive sum 4.5 is reached by 3 of 8 patterns from above.
    assert wilcoxon_signed_rank([1, -1, 2]) == 0.75
    assert wilcoxon_signed_rank([0, 1, 1]) == 0.5  # zeros dropped
    assert wilcoxon_signed_rank([0, 0]) == 1.0


# ---- population policies -------------------------------------------------------------
def test_aging_evolution_mutates_one_decision_and_removes_the_oldest():
    policy = AgingEvolution([3, 3, 3, 3], population_size=4, tournament_size=2, seed=0)
    first = policy.sample(4)
    assert len(set(first.archs)) == 4
    policy.update(first, [0.1, 0.2, 0.3, 0.4])
    children = policy.sample(6)
    parents = [arch for arch, _ in policy.population]
    for child in children.archs:
        assert min(sum(a != b for a, b in zip(child, parent)) for parent in parents) == 1
        assert child not in parents
    policy.update(children, [0.5] * 6)
    # Six newer members pushed all four first ones out, fittest or not.
    assert [arch for arch, _ in policy.population] == children.archs[-4:]
    assert policy.leading(1) == [children.archs[-4]]


def test_population_and_model_policies_resume_exactly():
    table = synthetic_table(5, 4)
    for make in (lambda: AgingEvolution([4] * 5, population_size=6, tournament_size=3, seed=3),
                 lambda: Nsga2([4] * 5, population_size=6, seed=3),
                 lambda: BayesianParetoSearch([4] * 5, table.flops, list(table.accuracy), initial_samples=6, seed=3)):

        def advance(policy, steps):
            for _ in range(steps):
                sample = policy.sample(4)
                objectives = [(table.query(a) / 100, table.flops(a)) for a in sample.archs]
                policy.update(sample, [acc for acc, _ in objectives], objectives)

        straight, interrupted = make(), make()
        advance(straight, 6)
        advance(interrupted, 3)
        state = json.loads(json.dumps(interrupted.state_dict(), default=lambda t: t.tolist()))
        restored = make()
        restored.load_state_dict({**state, "generator": interrupted.generator.get_state()})
        advance(restored, 3)
        assert _without_generator(restored.state_dict()) == _without_generator(straight.state_dict())
        assert restored.sample(5).archs == straight.sample(5).archs


def _without_generator(state: dict) -> dict:
    return {key: value for key, value in state.items() if key != "generator"}


def test_nsga2_needs_both_objectives_and_keeps_the_front():
    policy = Nsga2([3] * 5, population_size=10, seed=0)
    sample = policy.sample(3)
    with pytest.raises(ValueError, match="objectives"):
        policy.update(sample, [0.5] * 3)
    table = synthetic_table()
    nsga2, evolution, random = compare_strategies(table, ("nsga2", "evolution", "random"), budget=60, seeds=range(6))
    assert all(run.queries == 60 for run in nsga2.runs)
    assert nsga2.mean > random.mean + 0.04 and evolution.mean > random.mean + 0.04
    # Survivors are kept best first: non-dominated members, then the next front.
    policy = Nsga2(table.space.decisions, population_size=10, seed=1)
    for _ in range(8):
        sample = policy.sample(5)
        objectives = [(table.query(a) / 100, table.flops(a)) for a in sample.archs]
        policy.update(sample, [acc for acc, _ in objectives], objectives)
    ranks = nondominated_ranks([(-acc, f) for _, acc, f in policy.population])
    assert ranks == sorted(ranks) and ranks[0] == 0 and len(policy.population) == 10


def test_population_sizes_follow_the_budget():
    assert population_options("nsga2", 60) == {"population_size": 10}
    assert population_options("evolution", 781) == {"population_size": 50, "tournament_size": 10}
    assert population_options("evolution", 200) == {"population_size": 20, "tournament_size": 4}


# ---- tables brought by the user --------------------------------------------------------
def test_table_from_csv_and_json_with_flops_from_the_table(tmp_path):
    table = synthetic_table(3, 2)
    rows = [(table.space.encode(a), table.query(a), table.flops(a)) for a in table.accuracy]
    csv_file = tmp_path / "mine.csv"
    csv_file.write_text("model,top1,mflops\n" + "".join(f"{a},{acc},{f / 1e6}\n" for a, acc, f in rows))
    from_csv = TabularBenchmark.from_file(csv_file, "model", "top1", "mflops")
    assert isinstance(from_csv.space, TableSpace) and from_csv.space.decisions == (2, 2, 2)
    assert from_csv.accuracy == table.accuracy
    assert from_csv.flops((1, 0, 1)) == table.flops((1, 0, 1)) / 1e6 == from_csv.space.flops((1, 0, 1))
    json_file = tmp_path / "mine.json"
    json_file.write_text(json.dumps([{"arch": list(a), "acc": acc, "flops": table.flops(a)}
                                     for a, acc in table.accuracy.items()]))
    from_json = TabularBenchmark.from_file(json_file, "arch", "acc", "flops")
    assert from_json.accuracy == table.accuracy
    # The hypervolume report works on a user table: the true front scores exactly 1.
    everything = tabular_search(from_json, "random", budget=len(from_json), seed=0)
    assert everything.hypervolume_ratio == pytest.approx(1.0)
    hv, ref_flops, _ = true_front_reference(from_json)
    assert hv > 0 and ref_flops == max(table.flops(a) for a in table.accuracy)


def test_the_share_of_a_score_that_hangs_on_the_best_architectures():
    # FLOPs 1..6; the true front is 60, 70, 80, 90 % at FLOPs 1..4. Reference: 70 % (the
    # median), FLOPs 6. Area: 80 % over FLOPs 3..4 (10) + 90 % over 4..6 (40) = 50.
    accuracy = {(0, 0): 60.0, (0, 1): 70.0, (0, 2): 80.0, (1, 0): 90.0, (1, 1): 50.0, (1, 2): 40.0}
    flops = {arch: float(1 + 3 * arch[0] + arch[1]) for arch in accuracy}
    table = TabularBenchmark.from_records(TableSpace([2, 3], flops), accuracy, flops)
    assert true_front_reference(table) == (50.0, 6.0, 70.0)
    assert ratio_without_the_best(table, 0) == 1.0
    assert ratio_without_the_best(table, 1) == pytest.approx(30 / 50)  # 80 % over FLOPs 3..6
    assert ratio_without_the_best(table, 2) == 0.0
    with pytest.raises(ValueError, match="count must be >= 0"):
        ratio_without_the_best(table, -1)


@pytest.mark.parametrize("strategy", ["mobo", "random"])
def test_anytime_ratios_of_a_run_are_the_shorter_runs_for_budget_free_strategies(strategy):
    table = synthetic_table()
    long = tabular_search(table, strategy, budget=60, seed=3)
    curve = anytime_hypervolume_ratios(long, table, [15, 35, 60])
    shorter = [tabular_search(table, strategy, budget=b, seed=3).hypervolume_ratio for b in (15, 35)]
    assert curve == pytest.approx(shorter + [long.hypervolume_ratio])
    assert curve[0] < curve[2]  # the front grows: the prefixes are not all one value
    with pytest.raises(ValueError, match="1..60"):
        anytime_hypervolume_ratios(long, table, [61])


@pytest.mark.parametrize("content, arguments, message", [
    ("model,top1\n0-1,50\n", ("model", "top1", "mflops"), r"no column \['mflops'\]"),
    ("model,top1,f\n0-1,50,1\n", ("model", "top1"), "needs flops_column"),
    ("model,top1,f\n0-1,50,1\n0-1-1,60,2\n", ("model", "top1", "f"), "different lengths"),
    ("model,top1,f\n0-1,fifty,1\n", ("model", "top1", "f"), "line 2"),
    ("model,top1,f\nconv-pool,50,1\n", ("model", "top1", "f"), "write its choices as integers"),
    ("model,top1,f\n", ("model", "top1", "f"), "holds no architectures"),
])
def test_bad_tables_are_named_with_the_fix(tmp_path, content, arguments, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        TabularBenchmark.from_file(path, *arguments)


def sparse_table() -> TabularBenchmark:
    """A third of the synthetic space: what a user who trained a sample of it holds."""
    full = synthetic_table()
    kept = {a: acc for a, acc in full.accuracy.items() if sum(a) % 3 == 0}
    return TabularBenchmark.from_records(full.space, kept, name="sampled")


@pytest.mark.parametrize("strategy", ["random", "evolution", "nsga2", "mobo"])
def test_a_table_of_part_of_its_space_is_searched_through_its_rows(strategy):
    table = sparse_table()
    assert not table.complete and len(table) == 81 < table.space.size() == 243 and synthetic_table().complete
    result = tabular_search(table, strategy, budget=40, seed=0)
    assert result.queries == 40 and set(result.queried) <= set(table.accuracy)
    everything = tabular_search(table, strategy, budget=len(table), seed=1)
    assert everything.queries == 81 and everything.hypervolume_ratio == pytest.approx(1.0)


def test_a_table_of_part_of_its_space_refuses_the_controller_with_the_fix(tmp_path, capsys):
    with pytest.raises(ValueError, match="sampled holds 81 of the 243 architectures.*use random, evolution"):
        tabular_search(sparse_table(), "cas", budget=20)
    path = tmp_path / "sampled.csv"
    table = sparse_table()
    path.write_text("arch,accuracy,flops\n" + "".join(f"{table.space.encode(a)},{acc},{table.flops(a)}\n"
                                                       for a, acc in table.accuracy.items()))
    # Without --strategy, the strategies that can keep to the rows run; the others are named.
    assert cli.main(["search", "--space", "table", "--benchmark", str(path), "--budget", "10",
                     "--repeats", "2", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "cas, sms, enas sample the whole space, so they are left out" in printed
    runs = json.loads((tmp_path / "out" / "tabular.json").read_text())
    assert set(runs) == {"random", "evolution", "nsga2", "mobo"}


def test_table_space_looks_up_but_builds_nothing():
    space = TableSpace([2, 3], {(0, 2): 5.0})
    assert space.flops((0, 2)) == 5.0 and space.decode("0-2") == (0, 2) == parse_architecture([0, 2])
    with pytest.raises(KeyError, match="no FLOPs for architecture 1-1"):
        space.flops((1, 1))
    with pytest.raises(NotImplementedError, match="subclass"):
        space.build((0, 2))
    with pytest.raises(ValueError, match="decision 1 must be in"):
        TabularBenchmark.from_records(space, {(0, 3): 50.0})


def test_sms_on_a_table_targets_its_median_flops():
    table = synthetic_table()
    flops = sorted(table.flops(a) for a in table.accuracy)
    assert default_sms_target(table) == flops[len(flops) // 2]
    sms = tabular_search(table, "sms", budget=40, seed=0)
    enas = tabular_search(table, "enas", budget=40, seed=0)
    assert list(sms.queried) != list(enas.queried)  # the target penalises something now


def test_cli_runs_a_user_table_and_compares_strategies(tmp_path, capsys):
    table = synthetic_table()
    path = tmp_path / "mine.csv"
    path.write_text("arch,accuracy,flops\n" + "".join(f"{table.space.encode(a)},{acc},{table.flops(a)}\n"
                                                       for a, acc in table.accuracy.items()))
    out = tmp_path / "out"
    assert cli.main(["search", "--space", "table", "--benchmark", str(path), "--strategy", "nsga2",
                     "--budget", "30", "--repeats", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mine.csv: nsga2, random with 30 queries each" in printed
    kept = ratio_without_the_best(table, 3)
    assert 0 < kept < 1 and f"without its 3 most accurate architectures the true front keeps {kept:.3f}" in printed
    runs = json.loads((out / "tabular.json").read_text())
    assert set(runs) == {"nsga2", "random"} and all(len(r["queried"]) == 30 for r in runs["nsga2"])
    assert cli.main(["search", "--space", "table", "--benchmark", str(path), "--flops-column", "macs",
                     "--out", str(tmp_path / "bad")]) == 2
    assert "no column ['macs']" in capsys.readouterr().err


def test_own_table_example_runs(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "own_table.py"), "--out", str(tmp_path),
                           "--budget", "25", "--seeds", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "nsga2" in done.stdout and (tmp_path / "my_table.csv").is_file()


# ---- held-out NAS-Bench-201 tables ---------------------------------------------------
@needs_nats
def test_nsga2_recovers_95_percent_of_a_held_out_front_at_5_percent_of_the_space():
    """ImageNet16-120 and seeds 10-14 chose no setting (NSGA-II's are textbook ones)."""
    bench = nasbench201_benchmark(NATS_CSV, "imagenet16-120")
    nsga2, random = compare_strategies(bench, ("nsga2", "random"), budget=781, seeds=range(10, 15))
    assert nsga2.mean >= 0.95
    assert nsga2.against(random).wins == 5 and nsga2.mean > random.mean + 0.03


@needs_graph
def test_nasbench_graph_tables_of_the_three_product_structures():
    """Key: the structure's index among the benchmark's nine, then one digit per op."""
    with bench_file("pubmed").open("rb") as f:
        raw = pickle.load(f)
    arch = (GRAPH_OPS.index("fc"), GRAPH_OPS.index("cheb"), GRAPH_OPS.index("gin"), GRAPH_OPS.index("arma"))
    for structure, index in (("0-1-2-3", 8), ("0-0-1-3", 4), ((0, 1, 1, 2), 6)):
        table = nasbench_graph_benchmark("pubmed", "params", structure=structure)
        entry = raw[index * 10 ** 4 + arch[0] * 1000 + arch[1] * 100 + arch[2] * 10 + arch[3]]
        assert len(table) == 4096 and table.complete
        assert table.query(arch) == pytest.approx(100 * entry["perf"])
        assert table.flops(arch) == pytest.approx(entry["para"])
    assert nasbench_graph_benchmark("pubmed").name == "NAS-Bench-Graph pubmed"
    assert nasbench_graph_benchmark("pubmed", structure="0-0-1-3").name == "NAS-Bench-Graph pubmed 0-0-1-3"
    with pytest.raises(ValueError, match="not a product space.*0-0-1-3"):
        nasbench_graph_benchmark("pubmed", structure="0-0-1-1")  # nodes 3 and 4 are interchangeable
