"""Runs the benchmark suite and prints fastnas against its baselines, side by side.

    python benchmarks/run.py            # full rounds, writes benchmarks/results/<device>-<date>-<commit>.json
    python benchmarks/run.py --quick    # few rounds (CI), same table
    python benchmarks/run.py --time-limit 480   # stops measuring after 480 s, reports what it has

Speedup = baseline time / fastnas time (above 1: fastnas is faster), median of rounds.
"act" is the end-to-end steps' activation memory ratio (bytes autograd saves for the
backward, fastnas / baseline; any device). On CUDA the table also gives the share of
measured device bandwidth that the forward of the memory-bound ops reaches, and the
peak-memory ratio of the end-to-end steps. The per-kernel model (kernel_model.py) follows:
each CUDA kernel's floor and estimated time on an H100, and on CUDA its measured time.
Each row is read against the goals of the project and marked when one is missed.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEMORY_BOUND = {"multi_dilation_dwconv2d", "mixed_op", "batch_norm_mixed_op"}


def measured_bandwidth() -> float:
    """Bytes per second of a large device-to-device copy (read + write)."""
    import torch

    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 2 * src.numel() * 4 * 10 / (start.elapsed_time(end) / 1e3)


def goals(op: str, mode: str, on_cuda: bool) -> dict:
    if op == "canas_step":
        return {"eager": 1.3} if on_cuda else {}
    if op == "darts_step":
        return {"eager": 1.5} if on_cuda else {"eager": 1.2}
    if mode != "fwdbwd":
        return {}
    return {"eager": 2.0, "compile": 1.0} if on_cuda else {"eager": 1.0}


# Data-parallel scaling from the bytes a step all-reduces (ring all-reduce: each GPU moves
# 2 (N-1)/N of them), at NCCL bus bandwidths typical of 8 H100s on NVLink (~360 GB/s) and
# of nodes joined by one 400 Gb/s InfiniBand link per GPU (~40 GB/s), plus a latency per
# all-reduce; no overlap with the backward assumed (a lower bound on efficiency).
INTERCONNECTS = {"8 GPUs, NVLink": (8, 360e9, 20e-6), "2 nodes x 8 GPUs, InfiniBand": (16, 40e9, 50e-6)}


def scaling_estimate(allreduce_bytes: int, step_seconds: float) -> dict:
    estimate = {}
    for name, (gpus, bus_bandwidth, latency) in INTERCONNECTS.items():
        seconds = 2 * (gpus - 1) / gpus * allreduce_bytes / bus_bandwidth + latency
        estimate[name] = {"allreduce_ms": 1e3 * seconds, "efficiency": step_seconds / (step_seconds + seconds)}
    return estimate


def _cell(value: float | None, spec: str, width: int, unit: str = "") -> str:
    """A right-aligned table cell; '-' where the row has no such value."""
    return f"{'-' if value is None else format(value, spec) + unit:>{width}}"


def table(benchmarks: list[dict], on_cuda: bool, bandwidth: float | None) -> tuple[list[dict], str]:
    groups = defaultdict(dict)
    for b in benchmarks:
        info = b["extra_info"]
        key = (info["op"], info["case"], info["dtype"], info["mode"])
        groups[key][info["impl"]] = {"median_s": b["stats"]["median"], **info}
    rows, lines = [], []
    header = (f"{'op':<24} {'case':<26} {'dtype':<9} {'mode':<7} {'fastnas ms':>10} {'eager ms':>10} {'speedup':>8}"
              f" {'act':>5}")
    if on_cuda:
        header += f" {'compile ms':>10} {'vs comp':>8} {'fwd BW':>7} {'peak':>5}"
    lines += [header, "-" * len(header)]
    for key in sorted(groups):
        impls = groups[key]
        if "fastnas" not in impls or "eager" not in impls:
            continue
        op, case, dtype, mode = key
        ours = impls["fastnas"]["median_s"]
        row = {"op": op, "case": case, "dtype": dtype, "mode": mode, "fastnas_ms": 1e3 * ours,
               "eager_ms": 1e3 * impls["eager"]["median_s"], "speedup_vs_eager": impls["eager"]["median_s"] / ours}
        if "compile" in impls:
            row["compile_ms"] = 1e3 * impls["compile"]["median_s"]
            row["speedup_vs_compile"] = impls["compile"]["median_s"] / ours
        if bandwidth and mode == "fwd" and op in MEMORY_BOUND:
            row["bandwidth_fraction"] = impls["fastnas"]["bytes"] / ours / bandwidth
        if "peak_memory_bytes" in impls["fastnas"] and op in ("canas_step", "darts_step"):
            row["peak_memory_ratio"] = impls["fastnas"]["peak_memory_bytes"] / impls["eager"]["peak_memory_bytes"]
        if "saved_bytes" in impls["fastnas"]:
            row["saved_activation_ratio"] = impls["fastnas"]["saved_bytes"] / impls["eager"]["saved_bytes"]
        if "allreduce_bytes" in impls["fastnas"]:
            row["allreduce_bytes_per_step"] = impls["fastnas"]["allreduce_bytes"]
            row["data_parallel_estimate"] = scaling_estimate(impls["fastnas"]["allreduce_bytes"], ours)
        missed = [f"{name} < {need}x" for name, need in goals(op, mode, on_cuda).items()
                  if row.get(f"speedup_vs_{name}", need) < need]
        if row.get("bandwidth_fraction", 1.0) < 0.6:
            missed.append("bandwidth < 60%")
        if op == "darts_step" and row.get("peak_memory_ratio", 0.0) > 0.75:
            missed.append("peak memory > 0.75x")
        if op == "darts_step" and row.get("saved_activation_ratio", 0.0) > 0.75:
            missed.append("saved activations > 0.75x")
        row["goals_missed"] = missed
        rows.append(row)
        bandwidth_percent = 100 * row["bandwidth_fraction"] if "bandwidth_fraction" in row else None
        line = (f"{op:<24} {case:<26} {dtype.replace('torch.', ''):<9} {mode:<7} {_cell(row['fastnas_ms'], '.3f', 10)} "
                f"{_cell(row['eager_ms'], '.3f', 10)} {_cell(row['speedup_vs_eager'], '.2f', 8, 'x')} "
                f"{_cell(row.get('saved_activation_ratio'), '.2f', 5)}")
        if on_cuda:
            line += (f" {_cell(row.get('compile_ms'), '.3f', 10)} {_cell(row.get('speedup_vs_compile'), '.2f', 8, 'x')}"
                     f" {_cell(bandwidth_percent, '.1f', 7, '%')} {_cell(row.get('peak_memory_ratio'), '.2f', 5)}")
        if missed:
            line += "   MISSED: " + ", ".join(missed)
        lines.append(line)
    return rows, "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few rounds (for CI)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--out", default=str(HERE / "results"), help="directory for the JSON results")
    parser.add_argument("-k", help="only the cases matching this pytest expression")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="stop measuring after this long and report the cases measured by then")
    args = parser.parse_args(argv)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        partial_path = Path(tmp) / "partial.json"
        env = dict(os.environ, FASTNAS_BENCH_DEVICE=device, FASTNAS_BENCH_QUICK="1" if args.quick else "0",
                   FASTNAS_BENCH_PARTIAL=str(partial_path))
        command = [sys.executable, "-m", "pytest", str(HERE / "bench_fastnas.py"), "-q", "-p", "no:cacheprovider",
                   "--benchmark-disable-gc", "--benchmark-columns=median"]
        if args.k:
            command += ["-k", args.k]
        try:
            returncode = subprocess.run(command, env=env, timeout=args.time_limit).returncode
        except subprocess.TimeoutExpired:
            returncode = None
        raw = json.loads(partial_path.read_text()) if partial_path.exists() else {"benchmarks": []}
    complete = returncode == 0
    if returncode is None:
        print(f"time limit of {args.time_limit:.0f} s reached after {len(raw['benchmarks'])} measurements; "
              "reporting those", file=sys.stderr)
    elif returncode != 0:
        print(f"benchmarks failed (pytest exit code {returncode}); reporting the cases measured", file=sys.stderr)
    if not raw["benchmarks"]:
        return returncode or 1
    on_cuda = device.startswith("cuda")
    bandwidth = measured_bandwidth() if on_cuda else None
    rows, text = table(raw["benchmarks"], on_cuda, bandwidth)
    device_name = torch.cuda.get_device_name() if on_cuda else (platform.processor() or platform.machine())
    print(f"\nfastnas benchmarks on {device} ({device_name}), torch {torch.__version__}"
          + (f", measured copy bandwidth {bandwidth / 1e9:.0f} GB/s" if bandwidth else "")
          + (" [quick: few rounds]" if args.quick else ""))
    print("speedup = baseline time / fastnas time (median); above 1 means fastnas is faster")
    print(text)
    for row in rows:
        if "allreduce_bytes_per_step" in row:
            parts = ", ".join(f"{name}: {e['allreduce_ms']:.2f} ms, efficiency {100 * e['efficiency']:.0f}%"
                              for name, e in row["data_parallel_estimate"].items())
            print(f"{row['op']}: {row['allreduce_bytes_per_step'] / 1e6:.2f} MB all-reduced per data-parallel step; "
                  f"estimate with this step time ({'measured here' if on_cuda else 'a CPU step: optimistic for a GPU'}): "
                  f"{parts}")
    import kernel_model  # beside this script

    kernel_rows = kernel_model.model(measure_on_gpu=on_cuda, bandwidth=bandwidth)
    print("\nper-kernel model (benchmarks/kernel_model.py): estimate for an H100"
          + (", and measured here" if on_cuda else ""))
    print(kernel_model.report(kernel_rows))
    date = datetime.datetime.now(datetime.timezone.utc)
    result = {
        "device": device, "device_name": device_name, "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "date": date.isoformat(timespec="seconds"), "commit": _commit(), "quick": args.quick, "complete": complete,
        "bandwidth_bytes_per_s": bandwidth, "rows": rows, "kernel_model": kernel_rows,
        "pytest_benchmark": raw["benchmarks"],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ("-quick" if args.quick else "") + ("" if complete else "-partial")
    path = out / f"{'cuda' if on_cuda else 'cpu'}-{date:%Y%m%d-%H%M}-{result['commit']}{suffix}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"results written to {path}" + ("" if complete else " (incomplete)"))
    return 0 if complete or returncode is None else returncode


if __name__ == "__main__":
    sys.exit(main())
