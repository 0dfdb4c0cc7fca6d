"""Process memory from /proc (Linux) and CUDA peaks: shared by the memory benchmarks."""


def rss_kb(field: str) -> int:
    """A ``/proc/self/status`` field in KiB, e.g. ``VmRSS`` (now) or ``VmHWM`` (peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PeakMemory:
    """Peak memory growth, in bytes, of the code run after ``start()``.

    CUDA: ``max_memory_allocated`` over the allocation at start; CPU: the process's VmHWM
    (reset to the current RSS through ``/proc/self/clear_refs``) over the RSS at start.
    """

    def __init__(self, device) -> None:
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.base = 0

    def start(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
                f.write("5")
            self.base = rss_kb("VmRSS") * 1024

    def peak(self) -> int:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return rss_kb("VmHWM") * 1024 - self.base
