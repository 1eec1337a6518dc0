"""oddsparse.ops: segment reductions (scatter) and the spconv CPU guard.

Importing this package imports neither spconv nor torch_scatter; both are probed lazily.
"""
from oddsparse.ops.scatter import scatter_max, scatter_mean, scatter_sum
from oddsparse.ops.spconv_cpu import install_cpu_guard, maybe_install_cpu_guard

__all__ = ["scatter_mean", "scatter_sum", "scatter_max", "install_cpu_guard", "maybe_install_cpu_guard"]
