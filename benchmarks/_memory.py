"""Peak resident memory of the current process on Linux, for the CPU benchmarks.

``ru_maxrss`` is inherited from the parent at fork and never resets, so a rise measured with it can
read 0; these read ``/proc/self`` instead: the current resident size (``statm``), the peak
(``VmHWM``), and a reset of the peak to the current size (``clear_refs`` 5) after set-up.
"""
import resource


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """Peak resident size of this process (VmHWM), falling back to ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Reset the peak to the current resident size (Linux), so that set-up peaks do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # the peak then includes set-up; still comparable between variants measured alike
