"""Parameter-free comparison baselines: score each object by how far its volume is from its neighbours'.

A learned matcher should beat these: they compare instances with a fixed distance and no training
beyond the scene model's. :func:`distance_to_others` works on the box-aligned object volumes of
:meth:`OddOneOutDetector.object_volumes` (or any (O, C, S, S, S) tensor), packed over scenes.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["difference_to_others", "distance_to_others", "fit_distance_weights"]


def _check_volumes(who: str, volumes: Tensor, scene_index: Tensor) -> None:
    """Packed (O, C, S, S, S) object volumes with one scene index per object, or a ValueError naming ``who``."""
    if volumes.dim() != 5:
        raise ValueError(f"{who}: volumes must be (O, C, S, S, S), got {tuple(volumes.shape)}")
    if scene_index.shape != volumes.shape[:1]:
        raise ValueError(f"{who}: scene_index {tuple(scene_index.shape)} does not match {volumes.shape[0]} volumes")


def distance_to_others(volumes: Tensor, scene_index: Tensor, *, reduce: str = "median",
                       half_turn: bool = True, weights: Tensor | None = None) -> Tensor:
    """(O,) anomaly score of each object: its distance to the other objects of its scene.

    The distance of objects n and m is the L2 norm of ``volumes[n] - volumes[m]`` over all channels
    and cells. With ``half_turn`` it is the smaller of that and the distance to m's volume turned by
    pi about the box's vertical axis (axes i and j reversed): canonical boxes are defined up to such a
    half-turn. The score reduces the distances to the other objects of the scene with ``reduce``:
    ``"median"`` (the lower median for an even count, as :func:`torch.median`) or ``"mean"``. An
    object alone in its scene scores 0.

    With ``weights`` (how much each cell of each object is known, e.g. the fraction of it that the
    views observed), the pair distance compares what both objects know: ``sqrt(P * sum(w_n w_m
    (x_n - x_m)^2) / sum(w_n w_m))`` over the P entries (the plain distance when every weight is 1;
    0 when the two share no weight), turned with m's volume under ``half_turn``.

    Args:
        volumes: (O, C, S, S, S) box-aligned object volumes (axes i, j, k along box x, y, z).
        scene_index: (O,) int64 scene of each object.
        weights: optional (O, C, S, S, S) or (O, 1, S, S, S) non-negative weights.
    """
    _check_volumes("distance_to_others", volumes, scene_index)
    if reduce not in ("median", "mean"):
        raise ValueError(f"distance_to_others: reduce must be 'median' or 'mean', got {reduce!r}")
    if weights is not None:
        if weights.dim() != 5 or weights.shape[0] != volumes.shape[0] or weights.shape[2:] != volumes.shape[2:] \
                or weights.shape[1] not in (1, volumes.shape[1]):
            raise ValueError(f"distance_to_others: weights {tuple(weights.shape)} do not match volumes "
                             f"{tuple(volumes.shape)}")
        if (weights < 0).any():
            raise ValueError("distance_to_others: weights must be >= 0")
        weights = weights.expand_as(volumes).to(volumes.dtype)
    scores = volumes.new_zeros(volumes.shape[0])
    flat, turned = volumes.flatten(1), volumes.flip(2, 3).flatten(1)
    if weights is not None:
        w_flat, w_turned = weights.flatten(1), weights.flip(2, 3).flatten(1)
    for scene in torch.unique(scene_index).tolist():  # one O_s x O_s distance matrix per scene
        rows = torch.nonzero(scene_index == scene)[:, 0]
        n = rows.numel()
        if n < 2:
            continue
        x = flat[rows]
        if weights is None:
            dist = torch.cdist(x, x)
            if half_turn:
                dist = torch.minimum(dist, torch.cdist(x, turned[rows]))
        else:
            w = w_flat[rows]
            dist = _weighted_pair_distances(x, w, x, w)
            if half_turn:
                dist = torch.minimum(dist, _weighted_pair_distances(x, w, turned[rows], w_turned[rows]))
        others = dist[~torch.eye(n, dtype=torch.bool, device=dist.device)].view(n, n - 1)
        scores[rows] = others.median(dim=1).values if reduce == "median" else others.mean(dim=1)
    return scores


def difference_to_others(volumes: Tensor, scene_index: Tensor, groups: list[slice] | None = None, *,
                         half_turn: bool = True) -> Tensor:
    """(O, G, S, S, S) where each object differs from the other objects of its scene, cell by cell.

    For objects n and m, the squared difference ``(volumes[n] - volumes[m])^2`` summed over the channels of
    each group (``groups``: channel slices; default one group of all channels), in n's box frame; with
    ``half_turn`` m's volume is read turned by pi about the vertical axis where that pair's L2 distance over
    all channels and cells (:func:`distance_to_others`) is smaller turned. Each cell of object n then holds
    the median over the other objects m of its scene (the lower median for an even count). This is the
    distance of :func:`distance_to_others` before it is summed over the cells: it says *where* an object
    differs from the others. An object alone in its scene gets zeros.
    """
    _check_volumes("difference_to_others", volumes, scene_index)
    groups = [slice(None)] if groups is None else list(groups)
    out = volumes.new_zeros(volumes.shape[0], len(groups), *volumes.shape[2:])
    turned_all = volumes.flip(2, 3)
    for scene in torch.unique(scene_index).tolist():
        rows = torch.nonzero(scene_index == scene)[:, 0]
        n = rows.numel()
        if n < 2:
            continue
        x, turned = volumes[rows], turned_all[rows]
        use_turn = torch.zeros(n, n, dtype=torch.bool, device=volumes.device)
        if half_turn:
            use_turn = torch.cdist(x.flatten(1), turned.flatten(1)) < torch.cdist(x.flatten(1), x.flatten(1))
        others = ~torch.eye(n, dtype=torch.bool, device=volumes.device)
        for g, channels in enumerate(groups):
            xg, tg = x[:, channels], turned[:, channels]  # (n, c, S, S, S)
            squared = torch.stack([((xg - torch.where(use_turn[:, m, None, None, None, None], tg[m], xg[m])) ** 2)
                                   .sum(dim=1) for m in range(n)], dim=1)  # (n, n, S, S, S): row n, column m
            out[rows, g] = squared[others].view(n, n - 1, *volumes.shape[2:]).median(dim=1).values
    return out


def fit_distance_weights(columns, labels) -> tuple[list[float], float] | None:
    """Weights and bias of a logistic regression (scikit-learn, default regularisation) of anomaly ``labels``
    (N,) on per-object distance ``columns`` (N, F), e.g. the matcher's distance inputs
    (:meth:`OddOneOutDetector.distance_inputs`) of training objects: ``columns @ weights + bias`` is then a
    learned scorer on those distances, the least a matcher given them should read. None where ``labels``
    hold one class (nothing to fit)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    columns, labels = np.asarray(columns, dtype=np.float64), np.asarray(labels).astype(int)
    if columns.ndim != 2 or labels.shape != columns.shape[:1]:
        raise ValueError(f"fit_distance_weights: columns must be (N, F) and labels (N,), got {columns.shape} "
                         f"and {labels.shape}")
    if len(np.unique(labels)) < 2:
        return None
    model = LogisticRegression().fit(columns, labels)
    return model.coef_[0].tolist(), float(model.intercept_[0])


def _weighted_pair_distances(xn: Tensor, wn: Tensor, xm: Tensor, wm: Tensor) -> Tensor:
    """(N, M) ``sqrt(P sum w_n w_m (x_n - x_m)^2 / sum w_n w_m)`` of flattened (N, P) / (M, P) rows; 0 where
    the pair shares no weight. Computed in float64 (returned in ``xn``'s dtype): the expansion below cancels,
    and in float32 it loses the small distances of near-copies whose entries are large."""
    dtype = xn.dtype
    xn, wn, xm, wm = (t.double() for t in (xn, wn, xm, wm))
    # sum_p w_n w_m (x_n - x_m)^2 = (w x^2)_n . w_m + w_n . (w x^2)_m - 2 (w x)_n . (w x)_m
    squared = (wn * xn**2) @ wm.T + wn @ (wm * xm**2).T - 2 * (wn * xn) @ (wm * xm).T
    shared = wn @ wm.T
    return (torch.sqrt(xn.shape[1] * squared.clamp_min(0) / shared.clamp_min(1e-12)) * (shared > 0)).to(dtype)
