"""Naive reference of the matcher's attention: per scene, per object, per cell Python loops.

It shares the module's weights (it calls the same nn.Linear / LayerNorm / head modules) but none
of its index arithmetic: no padding, no topk, no gathers, no softmax masking.
"""
from __future__ import annotations

import math

import torch

from oddsparse.models.matcher import AnomalyMatcher, ObjectTokens


def correspondences_reference(tokens: ObjectTokens, k: int) -> list[list[int]]:
    """For each token, the token ids of its top-k cells (by beta dot product) in every other object of its scene."""
    beta = tokens.beta
    object_index = tokens.object_index.tolist()
    scene_index = tokens.scene_index.tolist()
    cells_of = {n: [t for t in range(tokens.num_tokens) if object_index[t] == n] for n in range(tokens.num_objects)}
    picks = []
    for t in range(tokens.num_tokens):
        n = object_index[t]
        keys = []
        for m in range(tokens.num_objects):
            if m == n or scene_index[m] != scene_index[n]:
                continue
            candidates = cells_of[m]
            similarity = [float(beta[t] @ beta[u]) for u in candidates]
            ranked = sorted(range(len(candidates)), key=lambda i: -similarity[i])
            keys += [candidates[i] for i in ranked[:k]]
        picks.append(keys)
    return picks


def scene_keys_reference(tokens: ObjectTokens) -> list[list[int]]:
    """For each token, every token of its scene (vanilla attention)."""
    scene_of_token = [int(tokens.scene_index[n]) for n in tokens.object_index.tolist()]
    return [[u for u in range(tokens.num_tokens) if scene_of_token[u] == scene_of_token[t]]
            for t in range(tokens.num_tokens)]


def matcher_reference(matcher: AnomalyMatcher, tokens: ObjectTokens) -> torch.Tensor:
    """Logits (O,) of ``matcher`` computed token by token."""
    r = matcher.resolution
    if matcher.variant == "full":
        keys_of = correspondences_reference(tokens, matcher.k)
    elif matcher.variant in ("B", "C"):
        keys_of = scene_keys_reference(tokens)
    else:
        keys_of = None
    x = []
    for t in range(tokens.num_tokens):
        i, j, kk = tokens.cells[t].tolist()
        x.append(matcher.input(tokens.feats[t]) + matcher.cell_embedding.weight[(i * r + j) * r + kk])
    for block in matcher.blocks:
        if keys_of is not None and x:  # (no token: nothing to attend)
            heads = block.heads
            qkv = torch.stack([block.qkv(block.norm_attention(xt)) for xt in x])  # (T, 3 * dim), token by token
            dim = qkv.shape[1] // 3
            head_dim = dim // heads
            updated = []
            for t in range(len(x)):
                message = []
                for h in range(heads):
                    q = qkv[t, h * head_dim:(h + 1) * head_dim]
                    if not keys_of[t]:
                        message.append(torch.zeros_like(q))
                        continue
                    keys = qkv[keys_of[t], dim + h * head_dim:dim + (h + 1) * head_dim]  # (n_keys, head_dim)
                    values = qkv[keys_of[t], 2 * dim + h * head_dim:2 * dim + (h + 1) * head_dim]
                    scores = keys @ q / math.sqrt(head_dim)
                    weights = torch.exp(scores - scores.max())
                    attended = (weights / weights.sum()) @ values
                    if block.difference_messages:  # minus the token's own value in this head
                        attended = attended - qkv[t, 2 * dim + h * head_dim:2 * dim + (h + 1) * head_dim]
                    message.append(attended)
                updated.append(x[t] + block.proj(torch.cat(message)))
            x = updated
        x = [xt + block.mlp(block.norm_mlp(xt)) for xt in x]
    x = [matcher.norm(xt) for xt in x]
    channels = matcher.head.cnn[0].in_channels
    dtype = tokens.feats.dtype
    volumes = []
    for n in range(tokens.num_objects):
        cells = {}
        for t in range(tokens.num_tokens):
            if int(tokens.object_index[t]) == n:
                cells[tuple(tokens.cells[t].tolist())] = torch.cat([x[t], torch.ones(1, dtype=dtype)])
        zero = torch.zeros(channels, dtype=dtype)
        flat = torch.stack([cells.get((i, j, kk), zero) for i in range(r) for j in range(r) for kk in range(r)])
        volumes.append(flat.T.reshape(channels, r, r, r))
    if not volumes:  # no object
        return torch.zeros(0, dtype=dtype)
    if not matcher.head.contrast:
        return matcher.head(torch.stack(volumes))
    descriptors = [matcher.head.cnn(v[None]).flatten() for v in volumes]
    scene_of = tokens.scene_index.tolist()
    logits = []
    for n, d in enumerate(descriptors):
        others = [descriptors[m] for m in range(len(descriptors)) if m != n and scene_of[m] == scene_of[n]]
        prototype = median_reference(others) if others else d
        logits.append(matcher.head.mlp(torch.cat([d, d - prototype]))[0])
    return torch.stack(logits)


def median_reference(rows: list[torch.Tensor]) -> torch.Tensor:
    """Element-wise median of equal-length vectors by sorting each column; the lower middle for an even count."""
    stacked = torch.stack(rows)  # (n, C)
    out = []
    for c in range(stacked.shape[1]):
        column = sorted(stacked[:, c].tolist())
        chosen = column[(len(column) - 1) // 2]
        out.append(stacked[[float(v) for v in stacked[:, c].tolist()].index(chosen), c])
    return torch.stack(out)
