"""Search results a person can read: the table of sampled architectures (JSON and CSV),
its accuracy/FLOPs Pareto front, a plot, the chosen architecture and a summary."""

import csv
import json
from pathlib import Path

from fastnas.search.pareto import pareto_front

COLUMNS = ("step", "phase", "target_flops", "flops", "params", "acc_valid", "acc_test", "reward", "train_loss",
           "encoding", "arch")


def choose(records: list[dict], f_min: float | None = None, f_max: float | None = None) -> dict:
    """The most accurate record (on validation) whose FLOPs lie in [f_min, f_max]; the
    most accurate overall when none does."""
    if not records:
        raise ValueError("no records to choose from")
    in_range = [r for r in records if (f_min is None or r["flops"] >= f_min) and (f_max is None or r["flops"] <= f_max)]
    pool = in_range or records
    return max(pool, key=lambda r: (r["acc_valid"], -r["flops"]))


def write_results(out_dir: str | Path, records: list[dict], config: dict, space_spec: dict,
                  f_range: tuple[float, float] | None) -> dict:
    """Writes results.json, results.csv, pareto.json, pareto.png and chosen.json;
    returns the chosen record."""
    out = Path(out_dir)
    front_idx = pareto_front([r["flops"] for r in records], [r["acc_valid"] for r in records])
    front = [records[i] for i in front_idx]
    chosen = choose(records, *(f_range or (None, None)))
    (out / "results.json").write_text(json.dumps(
        {"config": config, "space": space_spec, "records": records, "pareto_front": front, "chosen": chosen}, indent=1))
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({**r, "arch": " ".join(map(str, r["arch"]))})
    (out / "pareto.json").write_text(json.dumps(front, indent=1))
    (out / "chosen.json").write_text(json.dumps({"space": space_spec, **chosen}, indent=1))
    plot(records, front, chosen, out / "pareto.png", f_range)
    return chosen


def plot(records, front, chosen, path: Path, f_range=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = [r["step"] for r in records]
    scatter = ax.scatter([r["flops"] / 1e6 for r in records], [100 * r["acc_valid"] for r in records],
                         c=steps, cmap="viridis", s=14, alpha=0.7, label="sampled architectures")
    ax.plot([r["flops"] / 1e6 for r in front], [100 * r["acc_valid"] for r in front], "-o", color="crimson",
            markersize=5, label="Pareto front")
    ax.scatter([chosen["flops"] / 1e6], [100 * chosen["acc_valid"]], marker="*", s=220, color="gold",
               edgecolor="black", zorder=5, label="chosen")
    if f_range:
        ax.axvspan(f_range[0] / 1e6, f_range[1] / 1e6, color="grey", alpha=0.12, label="[F_min, F_max]")
    fig.colorbar(scatter, ax=ax, label="search step")
    ax.set_xlabel("multiply-adds (M)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("accuracy vs FLOPs of every sampled architecture")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(records: list[dict], chosen: dict, out_dir: str | Path) -> str:
    front = pareto_front([r["flops"] for r in records], [r["acc_valid"] for r in records])
    lines = [
        f"{len(records)} architectures sampled, {len(front)} on the accuracy/FLOPs Pareto front:",
        f"  {'MACs':>9}  {'params':>8}  {'valid':>6}  {'test':>6}  architecture",
    ]
    for i in front:
        r = records[i]
        lines.append(f"  {r['flops'] / 1e6:8.2f}M  {r['params'] / 1e6:7.3f}M  {100 * r['acc_valid']:5.1f}%  "
                     f"{100 * r['acc_test']:5.1f}%  {r['encoding']}")
    lines += [
        f"chosen (most accurate in the FLOPs range): {chosen['flops'] / 1e6:.2f}M MACs, "
        f"{chosen['params'] / 1e6:.3f}M params, valid {100 * chosen['acc_valid']:.1f}%, test {100 * chosen['acc_test']:.1f}%",
        f"  {chosen['encoding']}",
        f"results in {out_dir}: results.json/.csv, pareto.json, pareto.png, chosen.json (train it: fastnas train "
        f"--arch {Path(out_dir) / 'chosen.json'})",
    ]
    return "\n".join(lines)
