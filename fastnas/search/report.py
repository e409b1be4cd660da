"""Search results a person can read: the table of sampled architectures (JSON and CSV),
its accuracy/FLOPs Pareto front, a plot, the chosen architecture and a summary. The
architectures carry the accuracies of the final shared weights (WeightSharingSearch.
final_scores), so the front compares architectures, not moments of the training."""

import csv
import json
from pathlib import Path

from fastnas.search.pareto import pareto_front

COLUMNS = ("step", "phase", "target_flops", "flops", "params", "acc_valid", "acc_test", "acc_valid_when_sampled",
           "reward", "train_loss", "encoding", "arch")


def choose(records: list[dict], f_min: float | None = None, f_max: float | None = None) -> dict:
    """The most accurate record (on validation) whose FLOPs lie in [f_min, f_max]; the
    most accurate overall when none does."""
    if not records:
        raise ValueError("no records to choose from")
    in_range = [r for r in records if (f_min is None or r["flops"] >= f_min) and (f_max is None or r["flops"] <= f_max)]
    pool = in_range or records
    return max(pool, key=lambda r: (r["acc_valid"], -r["flops"]))


def write_results(out_dir: str | Path, records: list[dict], scored: list[dict], config: dict, space_spec: dict,
                  f_range: tuple[float, float] | None) -> dict:
    """Writes results.json (the search's records and the scored architectures), results.csv
    (the architectures), pareto.json, pareto.png and chosen.json; returns the chosen one."""
    out = Path(out_dir)
    front_idx = pareto_front([r["flops"] for r in scored], [r["acc_valid"] for r in scored])
    front = [scored[i] for i in front_idx]
    chosen = choose(scored, *(f_range or (None, None)))
    (out / "results.json").write_text(json.dumps(
        {"config": config, "space": space_spec, "records": records, "architectures": scored, "pareto_front": front,
         "chosen": chosen}, indent=1))
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in scored:
            writer.writerow({**r, "arch": " ".join(map(str, r["arch"]))})
    (out / "pareto.json").write_text(json.dumps(front, indent=1))
    (out / "chosen.json").write_text(json.dumps({"space": space_spec, **chosen}, indent=1))
    plot(scored, front, chosen, out / "pareto.png", f_range)
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
    fig.colorbar(scatter, ax=ax, label="search step first sampled")
    ax.set_xlabel("multiply-adds (M)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("sampled architectures, scored with the final shared weights")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(records: list[dict], chosen: dict, out_dir: str | Path) -> str:
    """`records`: the scored architectures."""
    front = pareto_front([r["flops"] for r in records], [r["acc_valid"] for r in records])
    lines = [
        f"{len(records)} distinct architectures sampled, {len(front)} on the accuracy/FLOPs Pareto front",
        "(accuracies: each architecture on the final shared weights, validation and test images; trained",
        " alone with fastnas train a network does better):",
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


# ---- DARTS -------------------------------------------------------------------------------
DARTS_COLUMNS = ("epoch", "train_loss", "supernet_accuracy", "entropy")


def write_darts_results(out_dir: str | Path, history: list[dict], genotype, config: dict) -> None:
    """genotype.json (loadable by fastnas train), history.json/.csv, curves.png (skip
    counts per cell set and architecture entropy per epoch) and cells.png."""
    out = Path(out_dir)
    (out / "genotype.json").write_text(genotype.to_json())
    (out / "history.json").write_text(json.dumps({"config": config, "history": history}, indent=1))
    keys = sorted(history[-1]["skip_connect"]) if history else []
    with (out / "history.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*DARTS_COLUMNS, *(f"skip_{k}" for k in keys)])
        for h in history:
            writer.writerow([h[c] for c in DARTS_COLUMNS] + [h["skip_connect"][k] for k in keys])
    plot_darts_curves(history, out / "curves.png")
    draw_cells(genotype, out / "cells.png")


def plot_darts_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key in sorted(history[0]["skip_connect"]) if history else []:
        ax1.plot(epochs, [h["skip_connect"][key] for h in history], "-o", markersize=3, label=key)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("skip_connect in the derived cell")
    ax1.set_title("skip connections per cell set")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.plot(epochs, [h["entropy"] for h in history], "-o", markersize=3, color="purple")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("architecture entropy")
    ax2.set_title("L_entropy = -sum a ln a")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_cells(genotype, path: Path) -> None:
    """Each derived cell as a graph: inputs c_{k-2}, c_{k-1}, nodes 0-3, output c_k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(genotype.cells)
    fig, axes = plt.subplots(len(keys), 1, figsize=(9, 2.6 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        pos = {0: (0, 1.0), 1: (0, -1.0), 2: (1.5, 1.2), 3: (3, -1.2), 4: (4.5, 1.2), 5: (6, -1.2), "out": (7.5, 0)}
        names = {0: "c_{k-2}", 1: "c_{k-1}", 2: "0", 3: "1", 4: "2", 5: "3", "out": "c_{k}"}
        for i, (op, src) in enumerate(genotype.cells[key]):
            dst = 2 + i // 2
            (x0, y0), (x1, y1) = pos[src], pos[dst]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", color="grey", lw=1))
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12 * (1 if i % 2 else -1), op, fontsize=7, ha="center",
                    color="darkred" if op == "skip_connect" else "black")
        for node in genotype.concat:
            (x0, y0), (x1, y1) = pos[node], pos["out"]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", color="lightblue", lw=1))
        for node, (x, y) in pos.items():
            ax.text(x, y, names[node], ha="center", va="center", fontsize=8,
                    bbox=dict(boxstyle="round", fc="lightyellow" if isinstance(node, int) and node >= 2 else "lightblue"))
        ax.set_title(key, fontsize=10)
        ax.set_xlim(-0.7, 8.2)
        ax.set_ylim(-1.8, 1.8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
