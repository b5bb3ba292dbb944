"""GPU utilisation during the main job: ``stitch run`` in a subprocess, the GPU sampled meanwhile.

Runs ``python -m stitch run EXP --out TMP --quiet --device DEV`` (default: the main job,
``experiments/unet_coordatt.yaml``, every variant and seed, as the README runs it; ``--epochs``
and ``--seeds`` pass through) in a subprocess with a fresh ``--out`` and, from this process,
samples the GPU every ``--interval`` seconds (default 0.1) from just before the subprocess starts
until it exits. A sample is the device's utilisation (the percentage of the driver's last sample
period, 1/6 s to 1 s on current GPUs, in which a kernel ran: ``nvidia-smi``'s ``utilization.gpu``)
and its used memory, read with, in this order of preference:

- NVML through ``pynvml`` (package ``nvidia-ml-py``), the device found by its UUID;
- ``torch.cuda.utilization`` (which needs ``pynvml`` too in current torch, so rarely the one);
- ``nvidia-smi --query-gpu=utilization.gpu,memory.used`` in a subprocess per sample (slower: the
  achieved interval is in the JSON).

Reported: the wall time of the subprocess (``time.perf_counter``, start-up and data preparation
included, as a user waits for them), the number of samples and the achieved interval, mean,
median and peak utilisation, the share of samples with any kernel running, and peak used memory
(the whole device's, as NVML reports it: every process on it, this one's small CUDA context too).
The data cache is not cleared: a first run on a machine also prepares the nuclei sample.

Without CUDA (``torch.cuda.is_available()`` false) it prints one line on stderr and a JSON record
with ``"skipped"`` saying why, and exits 0. Prints one JSON object; ``--trace FILE`` also writes
every sample as CSV (``seconds,util_percent,memory_mb``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_setup import MAIN_JOB

#: one reading: (utilisation in percent, used memory in MiB or None)
Reading = tuple[float, float | None]
Reader = Callable[[], Reading]


@dataclass
class Samples:
    """Readings with their time since sampling started."""

    source: str
    seconds: list[float] = field(default_factory=list)
    util: list[float] = field(default_factory=list)
    memory_mb: list[float | None] = field(default_factory=list)


def sample_until(read: Reader, source: str, interval: float, stop: threading.Event) -> Samples:
    """Call ``read`` every ``interval`` seconds until ``stop`` is set (a failed reading is skipped;
    the first failure is re-raised when no reading succeeded)."""
    out = Samples(source)
    start = time.perf_counter()
    first_error: Exception | None = None
    while True:
        tick = time.perf_counter()
        try:
            util, memory = read()
            out.seconds.append(tick - start)
            out.util.append(float(util))
            out.memory_mb.append(memory)
        except Exception as exc:  # a reading lost is no reason to lose the run's samples
            first_error = first_error or exc
        if stop.wait(max(0.0, interval - (time.perf_counter() - tick))):
            break
    if not out.util and first_error is not None:
        raise first_error
    return out


def summary(samples: Samples, wall: float) -> dict[str, Any]:
    """Mean, median and peak utilisation, busy share, peak memory, achieved interval."""
    util = samples.util
    memory = [m for m in samples.memory_mb if m is not None]
    gaps = [b - a for a, b in zip(samples.seconds, samples.seconds[1:])]
    return {
        "source": samples.source,
        "wall_seconds": round(wall, 3),
        "samples": len(util),
        "interval_seconds": round(statistics.median(gaps), 4) if gaps else None,
        "mean_util_percent": round(statistics.fmean(util), 2) if util else None,
        "median_util_percent": statistics.median(util) if util else None,
        "peak_util_percent": max(util) if util else None,
        "busy_share": round(sum(u > 0 for u in util) / len(util), 4) if util else None,
        "peak_memory_mb": max(memory) if memory else None,
    }


def run_command(args: argparse.Namespace, out: Path) -> list[str]:
    """The ``stitch run`` command line of the measured job."""
    cmd = [sys.executable, "-m", "stitch", "run", args.experiment, "--out", str(out), "--quiet"]
    cmd += ["--device", args.device]
    if args.epochs is not None:
        cmd += ["--epochs", str(args.epochs)]
    if args.seeds:
        cmd += ["--seeds", *[str(s) for s in args.seeds]]
    return cmd


def device_uuid(device: torch.device) -> str | None:  # CUDA only
    """NVML's UUID (``GPU-…``) of a CUDA device, or None when torch does not tell it."""
    try:
        uuid = str(torch.cuda.get_device_properties(device).uuid)
    except (AttributeError, RuntimeError):
        return None
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


def make_reader(device: torch.device) -> tuple[Reader, str]:  # CUDA only
    """The first working reader of the device's utilisation (module docstring) and its name."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = device_uuid(device)
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid.encode()) if uuid else None
        except pynvml.NVMLError:
            handle = None
        if handle is None:  # NVML's index is CUDA's on one GPU (not always with several)
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)

        def nvml() -> Reading:
            rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
            return float(rates.gpu), pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20

        nvml()
        return nvml, "pynvml"
    except Exception:  # not installed, or NVML unusable: the next reader
        pass
    try:
        torch.cuda.utilization(index)

        def torch_util() -> Reading:
            return float(torch.cuda.utilization(index)), None

        return torch_util, "torch.cuda.utilization"
    except Exception:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise SystemExit(
            "gpu_util: no NVML (pip install nvidia-ml-py) and no nvidia-smi to read the GPU with"
        )
    query = [smi, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
    query += [f"--id={uuid or index}"]

    def nvidia_smi() -> Reading:
        line = subprocess.run(query, capture_output=True, text=True, check=True).stdout.strip()
        util, memory = (float(v) for v in line.splitlines()[0].split(","))
        return util, memory

    nvidia_smi()
    return nvidia_smi, "nvidia-smi"


def write_trace(samples: Samples, path: Path) -> None:
    """Every sample as CSV."""
    rows = ["seconds,util_percent,memory_mb"]
    rows += [
        f"{t:.3f},{u:g},{'' if m is None else f'{m:.1f}'}"
        for t, u, m in zip(samples.seconds, samples.util, samples.memory_mb)
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=str(MAIN_JOB), help="experiment file (default: the main job)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1 …")
    parser.add_argument("--epochs", type=int, default=None, help="default: the experiment's")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the experiment's")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples")
    parser.add_argument("--trace", default=None, help="also write every sample to this CSV file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out: dict[str, Any] = {"benchmark": "gpu_util", "experiment": Path(args.experiment).name}
    if not torch.cuda.is_available():
        out["skipped"] = "no CUDA device (torch.cuda.is_available() is false)"
        print(f"gpu_util: skipped: {out['skipped']}", file=sys.stderr)
        print(json.dumps(out, indent=2))
        return out
    device = torch.device(args.device)  # CUDA only from here on
    read, source = make_reader(device)
    out |= {"device": str(device), "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__}
    stop = threading.Event()
    box: dict[str, Any] = {}

    def sample() -> None:
        try:
            box["samples"] = sample_until(read, source, args.interval, stop)
        except Exception as exc:  # reported after the run
            box["error"] = exc

    sampler = threading.Thread(target=sample)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = run_command(args, Path(tmp) / "runs")
        out["command"] = " ".join(["stitch", *cmd[3:]])
        sampler.start()
        start = time.perf_counter()
        done = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, env=os.environ.copy())
        wall = time.perf_counter() - start
        stop.set()
        sampler.join()
    if done.returncode != 0:
        raise SystemExit(f"stitch run exited {done.returncode}: {out['command']}")
    if "error" in box:
        raise SystemExit(f"gpu_util: no reading of the GPU succeeded ({source}): {box['error']}")
    samples: Samples = box["samples"]
    if args.trace:
        write_trace(samples, Path(args.trace))
    out |= summary(samples, wall)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
