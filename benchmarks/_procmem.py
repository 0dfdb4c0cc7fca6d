"""Process memory from /proc (Linux): shared by the memory benchmarks."""


def rss_kb(field: str) -> int:
    """A ``/proc/self/status`` field in KiB, e.g. ``VmRSS`` (now) or ``VmHWM`` (peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0
