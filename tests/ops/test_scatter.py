"""oddsparse.ops.scatter against naive loops (tests/reference_ops.py), both backends, forward and backward."""
from __future__ import annotations

import itertools

import pytest
import torch

from oddsparse._backends import has_torch_scatter
from oddsparse.ops import scatter_max, scatter_mean, scatter_sum
from reference_ops import scatter_max_reference, scatter_mean_reference, scatter_sum_reference

OPS = {"sum": (scatter_sum, scatter_sum_reference), "mean": (scatter_mean, scatter_mean_reference),
       "max": (scatter_max, scatter_max_reference)}
# (N rows, feature shape, S segments): includes empty segments, a single row, no rows, 1-D and 3-D rows
SIZES = [(1, (3,), 1), (17, (4,), 6), (40, (1,), 30), (25, (), 5), (12, (2, 3), 4), (0, (3,), 2)]
needs_torch_scatter = pytest.mark.skipif(not has_torch_scatter(),
                                         reason="torch_scatter is not installed "
                                                "(pip install --no-build-isolation torch-scatter)")


def _inputs(rows, feature_shape, segments, seed):
    generator = torch.Generator().manual_seed(seed)
    src = torch.randn(rows, *feature_shape, generator=generator, dtype=torch.float64)  # no ties (max)
    index = torch.randint(0, segments, (rows,), generator=generator)
    return src, index


def _forward_backward(function, src, index, segments, **kwargs):
    leaf = src.clone().requires_grad_()
    out = function(leaf, index, segments, **kwargs)
    generator = torch.Generator().manual_seed(7)
    grad_out = torch.randn(out.shape, generator=generator, dtype=out.dtype)
    if leaf.numel():
        (out * grad_out).sum().backward()
    grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
    return out.detach(), grad


def _backends():
    return ["torch", pytest.param("torch_scatter", marks=needs_torch_scatter)]


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("op", sorted(OPS))
def test_matches_naive_loop(op, backend):
    function, reference = OPS[op]
    for case, (rows, feature_shape, segments) in enumerate(SIZES):
        src, index = _inputs(rows, feature_shape, segments, seed=case)
        out, grad = _forward_backward(function, src, index, segments, backend=backend)
        out_ref, grad_ref = _forward_backward(reference, src, index, segments)
        assert out.shape == (segments, *feature_shape)
        torch.testing.assert_close(out, out_ref, msg=lambda m: f"{op} forward, sizes {SIZES[case]}: {m}")
        torch.testing.assert_close(grad, grad_ref, msg=lambda m: f"{op} backward, sizes {SIZES[case]}: {m}")


@needs_torch_scatter
@pytest.mark.parametrize("op", sorted(OPS))
def test_torch_and_torch_scatter_agree(op):
    function, _ = OPS[op]
    for dtype, (rows, segments) in itertools.product((torch.float32, torch.float64), ((500, 60), (2000, 2500))):
        src, index = _inputs(rows, (8,), segments, seed=rows)
        src = src.to(dtype)
        out_torch, grad_torch = _forward_backward(function, src, index, segments, backend="torch")
        out_ext, grad_ext = _forward_backward(function, src, index, segments, backend="torch_scatter")
        torch.testing.assert_close(out_ext, out_torch)
        torch.testing.assert_close(grad_ext, grad_torch)


def test_auto_uses_torch_scatter_only_for_max_and_only_when_installed(monkeypatch):
    import oddsparse.ops.scatter as scatter_module

    calls = []
    real = scatter_module.resolve_backend
    monkeypatch.setattr(scatter_module, "resolve_backend", lambda b, n: calls.append(real(b, n)) or calls[-1])
    src, index = _inputs(10, (2,), 3, seed=0)
    scatter_mean(src, index, 3)
    scatter_sum(src, index, 3)
    scatter_max(src, index, 3)
    assert calls == ["torch", "torch", "torch_scatter" if has_torch_scatter() else "torch"]


def test_dim_size_defaults_to_max_index_plus_one():
    src, index = _inputs(9, (2,), 4, seed=1)
    index[0] = 5
    assert scatter_sum(src, index, backend="torch").shape == (6, 2)


@pytest.mark.parametrize("bad, message", [
    (dict(index=torch.zeros(4, dtype=torch.long)), "index must be \\(N,\\)"),
    (dict(index=torch.zeros(5)), "integer tensor"),
    (dict(index=torch.tensor([0, 1, 2, 3, 3])), "dim_size = 3"),
    (dict(index=torch.tensor([0, -1, 2, 1, 1])), "\\[0, dim_size"),
    (dict(dim_size=-1), "dim_size must be >= 0"),
    (dict(backend="cuda_magic"), "backend must be"),
])
def test_bad_input_raises_clear_error(bad, message):
    arguments = dict(src=torch.randn(5, 2), index=torch.tensor([0, 1, 2, 1, 0]), dim_size=3, backend="torch")
    arguments.update(bad)
    with pytest.raises(ValueError, match=message):
        scatter_mean(arguments.pop("src"), arguments.pop("index"), arguments.pop("dim_size"), **arguments)


@pytest.mark.parametrize("backend", _backends())
def test_mean_of_integer_rows_is_refused_on_every_backend(backend):
    """The torch path divided integers exactly (1.5) where torch-scatter floors (1): one call, two answers."""
    with pytest.raises(ValueError, match="floating point, got torch.int64"):
        scatter_mean(torch.tensor([[1], [2], [5]]), torch.tensor([0, 0, 1]), backend=backend)
    assert scatter_sum(torch.tensor([[1], [2], [5]]), torch.tensor([0, 0, 1]), backend=backend).tolist() == [[3], [5]]


@pytest.mark.skipif(has_torch_scatter(), reason="torch_scatter is installed; this checks the missing-backend error")
def test_missing_torch_scatter_raises_with_install_hint():
    with pytest.raises(ModuleNotFoundError, match="torch-scatter"):
        scatter_mean(torch.randn(3, 2), torch.tensor([0, 1, 1]), 2, backend="torch_scatter")
