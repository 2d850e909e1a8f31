"""Shared helpers of the benchmark scripts: timing, memory, machine description, RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def preset_values(preset: str, config_file: Optional[str] = None) -> Dict[str, Any]:
    """A preset's config sections with a YAML file's merged over them, as ``p2m-geo train
    --preset P --config FILE`` builds them (before command-line options)."""
    from p2m_geo.config import merge_dicts, preset_dict, read_yaml_dict

    values = preset_dict(preset)
    return merge_dicts(values, read_yaml_dict(config_file)) if config_file else values


def machine_description(device: torch.device) -> str:
    import torch_geometric

    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads"
    return (
        f"{hardware}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"torch_geometric {torch_geometric.__version__}; {datetime.date.today().isoformat()}"
    )


def mode_label(flags: Sequence[Tuple[str, bool]]) -> str:
    """``"bf16 autocast, channels-last"`` from ``[(name, on), ...]``; ``"fp32"`` when none is on."""
    return ", ".join(name for name, on in flags if on) or "fp32"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> Tuple[float, float]:
    """Median and interquartile spread of ``fn`` wall time in milliseconds."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append((time.perf_counter() - start) * 1e3)
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return statistics.median(samples), quartiles[2] - quartiles[0]


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak extra memory of ``fn``: the CUDA allocator's peak on GPU; on CPU, the bytes of
    tensors autograd saves for backward plus the largest output (CPU has no allocator peak)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    saved: List[int] = []

    def nbytes(tensor: torch.Tensor) -> int:
        if tensor.layout == torch.sparse_csr:
            return sum(nbytes(t) for t in (tensor.crow_indices(), tensor.col_indices(), tensor.values()))
        return tensor.untyped_storage().nbytes()

    def pack(tensor: torch.Tensor):
        saved.append(nbytes(tensor))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out_bytes = out.untyped_storage().nbytes() if isinstance(out, torch.Tensor) else 0
    return sum(saved) + out_bytes


def write_section(title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of RESULTS.md, atomically."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    fd, tmp = tempfile.mkstemp(dir=RESULTS.parent, suffix=".md.tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, RESULTS)


def report(title: str, body: str, write: bool) -> None:
    """Print a result section and, with ``write``, put it into RESULTS.md under ``## title``."""
    print(body)
    if write:
        write_section(title, body)
