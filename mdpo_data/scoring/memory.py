"""Peak memory of a scoring or training run, printed next to the micro-batch it chose.

The batch that fits is the first thing a user tunes on a new GPU, so both commands end with
"micro-batch N, peak memory X GiB". GPU: `torch.cuda.max_memory_allocated` (what the tensors
needed, without the allocator's cache). CPU: the process's peak resident set size from
`resource` (everything the process touched, Python and libraries included).
"""

from __future__ import annotations

import sys


def reset_peak(device) -> None:
    """Start a GPU's peak counter here (the CPU peak RSS cannot be reset: it is the process's)."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device) -> dict:
    """{"peak_memory_gib": float, "peak_memory_source": how it was measured} for `device`."""
    import torch

    if str(device).startswith("cuda"):
        peak, source = torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        peak, source = (peak if sys.platform == "darwin" else peak * 1024), "peak RSS of the process"
    return {"peak_memory_gib": round(peak / 2**30, 3), "peak_memory_source": source}


def memory_line(micro_batch: int, peak: dict, unit: str) -> str:
    """The line both commands print at the end of a run."""
    return (f"micro-batch {micro_batch} {unit}, peak memory {peak['peak_memory_gib']:.2f} GiB "
            f"({peak['peak_memory_source']})")
