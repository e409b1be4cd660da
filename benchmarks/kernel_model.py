"""How far each CUDA kernel is from the memory floor: bytes it must move, bytes our design
moves, and the time these take on an H100, estimated or measured.

    python benchmarks/kernel_model.py             # the estimate (any machine)
    python benchmarks/kernel_model.py --measure   # on a GPU: each op timed, against its floor

floor bytes: every tensor the op reads or writes, once (taken from the op's fake kernel, so
it follows the op's real signature). design bytes: what the kernels move through DRAM, with
their re-reads (the halo rows of the depthwise bands; the batch-normalised mixed op's second
pass over its inputs). The estimate is a roofline over DRAM, shared memory and instruction
issue (a count per element read off the kernels' inner loops), plus a gap per extra launch:

    time = max(design / DRAM, shared / SMEM, instructions / ISSUE) + (launches - 1) * LAUNCH_GAP

and the fraction of DRAM bandwidth is floor / DRAM / time. --measure replaces the time by
the median of CUDA-event timings and DRAM by the measured copy bandwidth.
"""

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import fastnas  # noqa: F401  (registers torch.ops.fastnas)

# H100 SXM: HBM3 bandwidth, shared memory (32 banks x 4 bytes per clock per SM at 1.755 GHz
# on 132 SMs), thread instructions issued (4 schedulers x 32 threads per clock per SM), and the
# gap one more back-to-back launch adds.
H100 = {"dram": 3.35e12, "smem": 132 * 128 * 1.755e9, "issue": 132 * 4 * 32 * 1.755e9, "launch_gap": 1.5e-6}
BAND_ROWS = 32  # the tiled depthwise kernels' output rows per block (csrc/cuda)
OUTPUTS_PER_THREAD = 4  # of the tiled forward at strides 1 and 2


@dataclass
class KernelCase:
    name: str
    case: str
    call: Callable[[str], tuple]  # device -> (op, args): what --measure times and the fake counts
    extra_dram: Callable[[int], int]  # element size -> bytes moved beyond the floor
    shared: int  # bytes through shared memory
    instructions: int  # thread instructions
    launches: int

    def floor_bytes(self) -> int:
        """Inputs and outputs of the op, each once, from its fake kernel on the meta device."""
        op, args = self.call("meta")
        results = op(*args)
        tensors = [a for a in _flatten(args) if isinstance(a, torch.Tensor)]
        tensors += [r for r in _flatten(results) if isinstance(r, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def element_size(self) -> int:
        op, args = self.call("meta")
        return next(a for a in _flatten(args) if isinstance(a, torch.Tensor)).element_size()


def _flatten(values):
    for value in values if isinstance(values, (list, tuple)) else [values]:
        if isinstance(value, (list, tuple)):
            yield from _flatten(value)
        else:
            yield value


def _tensor(device, *shape, dtype=torch.float32):
    return torch.empty(*shape, device=device, dtype=dtype).normal_() if device != "meta" else \
        torch.empty(*shape, device=device, dtype=dtype)


def depthwise_cases(n, c, hw, kernel_size, dilations, dtype=torch.float32):
    lib = torch.ops.fastnas
    outputs = n * c * hw * hw
    taps = kernel_size * kernel_size
    element = torch.empty((), dtype=dtype).element_size()
    # each band of BAND_ROWS output rows re-reads (K-1)*d halo rows, averaged over the groups
    halo = sum((kernel_size - 1) * d for d in dilations) / len(dilations) / BAND_ROWS
    case = f"N{n} C{c} {hw}x{hw} K{kernel_size} d{','.join(map(str, dilations))}"
    dils = list(dilations)
    shape = (n, c, hw, hw)
    staged = int(outputs * (1 + halo))  # elements written to shared memory
    # forward and input gradient: each thread loads (R-1+K) tap rows of K values for its R
    # outputs (OUTPUTS_PER_THREAD); an FMA per tap, and the index math and store per output
    loads = (OUTPUTS_PER_THREAD - 1 + kernel_size) * kernel_size / OUTPUTS_PER_THREAD
    shared = int((loads * outputs + staged) * element)
    per_output = loads + taps + 6
    # weight gradient: per tap column, R gradient and (R-1+K) input loads for R outputs
    grad_loads = kernel_size * (2 * OUTPUTS_PER_THREAD - 1 + kernel_size) / OUTPUTS_PER_THREAD
    return [
        KernelCase("depthwise forward", case,
                   lambda d: (lib.multi_dilation_dwconv2d, (_tensor(d, *shape, dtype=dtype),
                                                            _tensor(d, c, 1, kernel_size, kernel_size, dtype=dtype),
                                                            dils, None, 1)),
                   lambda e: int(halo * outputs * e), shared, int(per_output * outputs), 1),
        KernelCase("depthwise input grad", case,
                   lambda d: (lib.multi_dilation_dwconv2d_grad_input,
                              (_tensor(d, *shape, dtype=dtype), _tensor(d, c, 1, kernel_size, kernel_size, dtype=dtype),
                               dils, 1, list(shape))),
                   lambda e: int(halo * outputs * e), shared, int(per_output * outputs), 1),
        KernelCase("depthwise weight grad", case,
                   lambda d: (lib.multi_dilation_dwconv2d_grad_weight,
                              (_tensor(d, *shape, dtype=dtype), _tensor(d, *shape, dtype=dtype), dils, 1,
                               kernel_size)),
                   lambda e: int(halo * outputs * e), int((grad_loads * outputs + staged + outputs) * element),
                   int((grad_loads + taps + 6) * outputs), 2),  # + the counters' memset
    ]


def pool_cases(n, c, hw):
    lib = torch.ops.fastnas
    shape = (n, c, hw, hw)
    outputs = n * c * hw * hw
    case = f"N{n} C{c} {hw}x{hw} stride 1"
    return [
        KernelCase("pool pair forward", case, lambda d: (lib.pool3x3_pair, (_tensor(d, *shape), 1)),
                   lambda e: 0, 0, 60 * outputs, 1),  # 9 taps: load, compare, add; index math
        KernelCase("pool pair backward", case,
                   lambda d: (lib.pool3x3_pair_backward, (_tensor(d, *shape), _tensor(d, *shape),
                                                          torch.zeros(shape, device=d, dtype=torch.uint8),
                                                          list(shape), 1)),
                   lambda e: 0, 0, 80 * outputs, 1),  # the outputs covering an input, and its window count
    ]


def _candidates(device, shape, count):
    return [_tensor(device, *shape) for _ in range(count)]


def _weights(device, count):
    return torch.full((count,), 1.0 / count, device=device)


def mixed_cases(n, c, hw, count):
    lib = torch.ops.fastnas
    shape = (n, c, hw, hw)
    elements = n * c * hw * hw
    case = f"N{n} C{c} {hw}x{hw} K{count}"
    indices = list(range(count))
    return [
        KernelCase("mixed op forward", case,
                   lambda d: (lib.mixed_op, (_candidates(d, shape, count), _weights(d, count), indices)),
                   lambda e: 0, 0, (2 * count + 5) * elements, 1),
        KernelCase("mixed op backward", case,
                   lambda d: (lib.mixed_op_backward,
                              (_tensor(d, *shape), _candidates(d, shape, count), _weights(d, count), indices, True)),
                   lambda e: 0, 0, (4 * count + 5) * elements, 2),  # + the counter's memset
    ]


def batch_norm_mixed_cases(n, c, hw, count, normalized):
    lib = torch.ops.fastnas
    shape = (n, c, hw, hw)
    elements = n * c * hw * hw
    case = f"N{n} C{c} {hw}x{hw} K{count} ({normalized} BN)"
    indices = list(range(count))
    normalize = [k < normalized for k in range(count)]

    def statistics(d):
        return _tensor(d, count, c), torch.ones(count, c, device=d)

    return [
        # a statistics pass over the normalised inputs (+ memset), then the weighted sum
        KernelCase("BN mixed op forward", case,
                   lambda d: (lib.batch_norm_mixed_op,
                              (_candidates(d, shape, count), _weights(d, count), indices, normalize, 1e-5)),
                   lambda e: normalized * elements * e, 0, (3 * normalized + 4 * count + 5) * elements, 3),
        # gradient sums over the gradient and every input (+ memset), then every input gradient,
        # then the weight gradient's sum over channels and scatter
        KernelCase("BN mixed op backward", case,
                   lambda d: (lib.batch_norm_mixed_op_backward,
                              (_tensor(d, *shape), _candidates(d, shape, count), _weights(d, count), indices,
                               normalize, *statistics(d), True)),
                   lambda e: (1 + count) * elements * e, 0, (11 * count + 8) * elements, 5),
    ]


def cases() -> list[KernelCase]:
    """The benchmark suite's shapes (bench_fastnas.py) and the reference N128 C288 28x28."""
    return [*depthwise_cases(128, 288, 28, 3, (1, 2)), *depthwise_cases(128, 144, 28, 3, (1, 2, 3, 4)),
            *depthwise_cases(128, 288, 28, 7, (1, 2)), *pool_cases(128, 288, 28), *pool_cases(64, 16, 32),
            *mixed_cases(64, 16, 32, 8), *batch_norm_mixed_cases(64, 16, 32, 7, 6)]


def estimate(kernel: KernelCase, device: dict = H100) -> dict:
    floor = kernel.floor_bytes()
    design = floor + kernel.extra_dram(kernel.element_size())
    bound = max(design / device["dram"], kernel.shared / device["smem"], kernel.instructions / device["issue"])
    time = bound + (kernel.launches - 1) * device["launch_gap"]
    return {"kernel": kernel.name, "case": kernel.case, "floor_bytes": floor, "design_bytes": design,
            "floor_us": 1e6 * floor / device["dram"], "estimated_us": 1e6 * time,
            "estimated_fraction": floor / device["dram"] / time}


def measure(kernel: KernelCase, bandwidth: float, repeats: int = 20) -> dict:
    """Median CUDA-event time of the op on the current GPU, against its floor at `bandwidth`."""
    op, args = kernel.call("cuda")
    for _ in range(3):
        op(*args)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        op(*args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    median = sorted(times)[len(times) // 2]
    floor = kernel.floor_bytes()
    return {"measured_us": 1e6 * median, "measured_fraction": floor / bandwidth / median}


def report(rows: list[dict]) -> str:
    header = (f"{'kernel':<22} {'case':<34} {'floor MB':>9} {'design MB':>9} {'floor us':>9} {'est. us':>8}"
              f" {'est. BW':>7}")
    measured = any("measured_us" in r for r in rows)
    if measured:
        header += f" {'meas. us':>9} {'meas. BW':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        line = (f"{r['kernel']:<22} {r['case']:<34} {r['floor_bytes'] / 1e6:>9.1f} {r['design_bytes'] / 1e6:>9.1f}"
                f" {r['floor_us']:>9.1f} {r['estimated_us']:>8.1f} {100 * r['estimated_fraction']:>6.0f}%")
        if measured:
            line += f" {r['measured_us']:>9.1f} {100 * r['measured_fraction']:>7.0f}%"
        lines.append(line)
    return "\n".join(lines)


def model(measure_on_gpu: bool, bandwidth: float | None = None) -> list[dict]:
    rows = []
    for kernel in cases():
        row = estimate(kernel)
        if measure_on_gpu:
            row.update(measure(kernel, bandwidth))
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", action="store_true", help="time every op on the GPU (needs CUDA)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    bandwidth = None
    if args.measure:
        if not torch.cuda.is_available():
            parser.error("--measure needs a CUDA GPU; without one, leave it out for the estimate")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from run import measured_bandwidth

        bandwidth = measured_bandwidth()
    rows = model(args.measure, bandwidth)
    print("per-kernel model: estimate for an H100 SXM (3.35 TB/s)"
          + (f"; measured on {torch.cuda.get_device_name()}, copy bandwidth {bandwidth / 1e9:.0f} GB/s"
             if bandwidth else ""))
    print(report(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
