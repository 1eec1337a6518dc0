"""Cross-instance matcher: object volumes -> occupied-cell tokens -> attention -> one anomaly logit per object.

Glossary used here (see :mod:`oddsparse`): B scenes, O objects (packed over the batch), T tokens
(the occupied cells of all objects, packed), C channels, K correspondences per other object,
r cells per object-volume axis (8), H attention heads, L = O_max * K candidate keys per token.

Pipeline (paper Sec. 3.3, Eq. 7):

1. :func:`build_object_tokens` keeps the occupied cells of each (O, C, r, r, r) object volume as
   tokens (:class:`ObjectTokens`); empty cells never enter the attention.
2. :class:`AnomalyMatcher` embeds the tokens, runs ``blocks`` pre-norm transformer blocks whose
   attention depends on ``variant``:

   - ``"A"``: none (token-wise MLP blocks only: each object alone, no comparison);
   - ``"B"`` and ``"C"``: vanilla multi-head attention of each token over every token of every
     object of its scene (its own object included);
   - ``"full"``: sparse voxel attention: each token attends over the union of its
     correspondences in every *other* object of its scene, the top-``k`` cells by
     ``beta(z_n)^T beta(z_m)`` (:func:`find_correspondences`), with shared W_Q, W_K, W_V and one
     softmax over the union.

   B and C are the same network; C differs in training only (the scene model's distillation loss is
   on, :attr:`AnomalyMatcher.uses_distillation`).
3. The tokens are put back in their r^3 volume (empty cells zero, plus an occupancy channel), a small
   3D CNN downsamples r -> 1 and a 2-layer MLP gives one logit per object.

Everything is batched over scenes with different object counts: objects are padded per scene to
(B, O_max, P_max) inside the correspondence search, which is chunked over query objects to bound
memory. Both attentions run as dense masked attention on the tokens padded per scene (B, H, T_max, D)
(:func:`masked_scene_attention`, chunked over query rows): the sparse one with an additive bias
(:func:`correspondence_bias`) that is zero exactly on each token's correspondences and ``finfo.min``
elsewhere, so that the softmax gives every other key a weight of exactly zero: the same function as
attention over the gathered correspondences, but computed with dense matrix products, which on CPU
measured 5-10x faster than gathering each token's (O-1)K keys and no larger in memory than vanilla
attention (benchmarks/bench_matcher.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ObjectTokens", "patch_cells", "build_object_tokens", "find_correspondences", "correspondence_bias",
           "padding_bias", "masked_scene_attention", "MatcherBlock", "VolumeHead", "scene_median_of_others",
           "AnomalyMatcher"]

Variant = Literal["A", "B", "C", "full"]


# ---------------------------------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class ObjectTokens:
    """The occupied cells of a batch of object volumes, packed.

    Attributes:
        feats: (T, C) features of the attention path.
        cells: (T, 3) int64 cell index (i, j, k) in the object's r^3 volume (axes along box x, y, z).
        object_index: (T,) int64 object of each token, in [0, O).
        scene_index: (O,) int64 scene of each object (the batch may mix scenes with different
            object counts). Objects with no token are allowed.
        beta: (T, C_beta) projected distilled features used only to pick correspondences
            (needed by ``variant="full"``), or None.
        resolution: r.

    Example:
        >>> volumes = torch.randn(3, 4, 8, 8, 8); density = torch.rand(3, 8, 8, 8)
        >>> tokens = build_object_tokens(volumes, density, torch.tensor([0, 0, 1]), threshold=0.5)
        >>> tokens.feats.shape[1], tokens.num_objects, tokens.num_scenes
        (4, 3, 2)
    """

    feats: Tensor
    cells: Tensor
    object_index: Tensor
    scene_index: Tensor
    beta: Tensor | None = None
    resolution: int = 8

    def __post_init__(self):
        def fail(field, expected, got):
            raise ValueError(f"ObjectTokens.{field} must be {expected}, got {got}")

        if not isinstance(self.feats, Tensor) or self.feats.dim() != 2 or not self.feats.is_floating_point():
            fail("feats", "a floating (T, C) tensor", getattr(self.feats, "shape", type(self.feats)))
        num_tokens = self.feats.shape[0]
        if not isinstance(self.cells, Tensor) or tuple(self.cells.shape) != (num_tokens, 3) or \
                self.cells.dtype != torch.int64:
            fail("cells", f"an int64 ({num_tokens}, 3) tensor", (getattr(self.cells, "shape", None),
                                                                  getattr(self.cells, "dtype", None)))
        if not isinstance(self.object_index, Tensor) or tuple(self.object_index.shape) != (num_tokens,) or \
                self.object_index.dtype != torch.int64:
            fail("object_index", f"an int64 ({num_tokens},) tensor",
                 (getattr(self.object_index, "shape", None), getattr(self.object_index, "dtype", None)))
        if not isinstance(self.scene_index, Tensor) or self.scene_index.dim() != 1 or \
                self.scene_index.dtype != torch.int64:
            fail("scene_index", "an int64 (O,) tensor",
                 (getattr(self.scene_index, "shape", None), getattr(self.scene_index, "dtype", None)))
        if self.beta is not None and (not isinstance(self.beta, Tensor) or self.beta.dim() != 2 or
                                      self.beta.shape[0] != num_tokens):
            fail("beta", f"None or a ({num_tokens}, C_beta) tensor", getattr(self.beta, "shape", type(self.beta)))
        if self.resolution < 1:
            fail("resolution", ">= 1", self.resolution)
        if num_tokens:
            if int(self.cells.min()) < 0 or int(self.cells.max()) >= self.resolution:
                fail("cells", f"in [0, {self.resolution})", (int(self.cells.min()), int(self.cells.max())))
            if int(self.object_index.min()) < 0 or int(self.object_index.max()) >= self.num_objects:
                fail("object_index", f"in [0, O={self.num_objects})",
                     (int(self.object_index.min()), int(self.object_index.max())))
            keys = self.object_index * self.resolution ** 3 + self.linear_cells()
            if torch.unique(keys).numel() != num_tokens:
                fail("cells", "unique per object", "a repeated (object, cell) pair")
        if self.num_objects and int(self.scene_index.min()) < 0:
            fail("scene_index", ">= 0", int(self.scene_index.min()))

    @property
    def num_tokens(self) -> int:
        return self.feats.shape[0]

    @property
    def num_objects(self) -> int:
        return self.scene_index.shape[0]

    @property
    def num_scenes(self) -> int:
        return int(self.scene_index.max()) + 1 if self.num_objects else 0

    def linear_cells(self) -> Tensor:
        """(T,) int64 row-major index i * r^2 + j * r + k of each token's cell."""
        r = self.resolution
        return (self.cells[:, 0] * r + self.cells[:, 1]) * r + self.cells[:, 2]

    def densify(self, values: Tensor) -> Tensor:
        """Put per-token ``values`` (T, C') back in their volumes: (O, C', r, r, r), empty cells zero."""
        r = self.resolution
        flat = values.new_zeros(self.num_objects * r ** 3, values.shape[1])
        flat = flat.index_put((self.object_index * r ** 3 + self.linear_cells(),), values)
        return flat.reshape(self.num_objects, r, r, r, values.shape[1]).permute(0, 4, 1, 2, 3)

    def replace(self, **changes) -> "ObjectTokens":
        return replace(self, **changes)


def patch_cells(volumes: Tensor, patch: int) -> Tensor:
    """Space-to-depth: (O, C, r, r, r) -> (O, C * p^3, r / p, r / p, r / p), ``p = patch``.

    Cell ``(i, j, k)`` of the output holds the ``p^3`` cells ``(p i + a, p j + b, p k + c)`` of the input,
    channel ``((ch * p + a) * p + b) * p + c`` for input channel ``ch``: a patch of fine cells becomes one
    token of their stacked channels, so that a linear layer on it is a patch embedding (a stride-``p``
    convolution with a ``p^3`` kernel). ``patch=1`` returns ``volumes``.
    """
    if volumes.dim() != 5:
        raise ValueError(f"patch_cells: volumes must be (O, C, r, r, r), got {tuple(volumes.shape)}")
    if patch < 1 or any(n % patch for n in volumes.shape[2:]):
        raise ValueError(f"patch_cells: patch must be >= 1 and divide every axis of {tuple(volumes.shape[2:])}, "
                         f"got {patch}")
    if patch == 1:
        return volumes
    o, c, x, y, z = volumes.shape
    p = patch
    cells = volumes.reshape(o, c, x // p, p, y // p, p, z // p, p).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return cells.reshape(o, c * p ** 3, x // p, y // p, z // p)


def build_object_tokens(volumes: Tensor, occupancy: Tensor, scene_index: Tensor | None = None, *,
                        threshold: float = 0.2, beta: Tensor | None = None) -> ObjectTokens:
    """Keep the occupied cells of object volumes as tokens.

    Args:
        volumes: (O, C, r, r, r) object features (e.g. from ``geometry.roi.roi_sample``).
        occupancy: (O, r, r, r) density or occupancy; a cell is a token when ``occupancy > threshold``.
        scene_index: (O,) scene of each object; default all 0.
        threshold: occupancy threshold.
        beta: optional (O, C_beta, r, r, r) distilled features (correspondence search of ``"full"``).
    Returns:
        :class:`ObjectTokens` ordered by object, then cell (row-major i, j, k).
    """
    if volumes.dim() != 5 or volumes.shape[2] != volumes.shape[3] or volumes.shape[2] != volumes.shape[4]:
        raise ValueError(f"build_object_tokens: volumes must be (O, C, r, r, r), got {tuple(volumes.shape)}")
    num_objects, r = volumes.shape[0], volumes.shape[2]
    if tuple(occupancy.shape) != (num_objects, r, r, r):
        raise ValueError(f"build_object_tokens: occupancy must be ({num_objects}, {r}, {r}, {r}), "
                         f"got {tuple(occupancy.shape)}")
    if beta is not None and (beta.dim() != 5 or beta.shape[0] != num_objects or tuple(beta.shape[2:]) != (r, r, r)):
        raise ValueError(f"build_object_tokens: beta must be ({num_objects}, C_beta, {r}, {r}, {r}), "
                         f"got {tuple(beta.shape)}")
    if scene_index is None:
        scene_index = torch.zeros(num_objects, dtype=torch.int64, device=volumes.device)
    scene_index = torch.as_tensor(scene_index, device=volumes.device)
    if tuple(scene_index.shape) != (num_objects,):
        raise ValueError(f"build_object_tokens: scene_index must be ({num_objects},), got {tuple(scene_index.shape)}")
    mask = occupancy > threshold  # (O, r, r, r)
    index = torch.nonzero(mask)  # (T, 4) (object, i, j, k), row-major order
    feats = volumes.permute(0, 2, 3, 4, 1)[mask]  # (T, C)
    token_beta = beta.permute(0, 2, 3, 4, 1)[mask] if beta is not None else None
    return ObjectTokens(feats=feats, cells=index[:, 1:].contiguous(), object_index=index[:, 0].contiguous(),
                        scene_index=scene_index.long(), beta=token_beta, resolution=r)


# ---------------------------------------------------------------------------------------------- layout
class _Layout(NamedTuple):
    """Index maps between packed tokens and padded per-object / per-scene layouts."""

    object_slot: Tensor        # (O,) rank of each object within its scene
    token_rank: Tensor         # (T,) rank of each token within its object
    token_of_object: Tensor    # (O, P_max) token id, -1 padding
    object_of_scene: Tensor    # (B, O_max) object id, -1 padding
    token_scene_rank: Tensor   # (T,) rank of each token within its scene
    max_scene_tokens: int


def _ranks(group: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Rank of each element within its group (in index order) and the group sizes."""
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(group)
    rank[order] = torch.arange(group.numel(), device=group.device) - starts[group[order]]
    return rank, counts


def _layout(tokens: ObjectTokens) -> _Layout:
    device = tokens.feats.device
    num_objects, num_scenes = tokens.num_objects, tokens.num_scenes
    object_slot, objects_per_scene = _ranks(tokens.scene_index, num_scenes)
    token_rank, tokens_per_object = _ranks(tokens.object_index, num_objects)
    max_cells = max(1, int(tokens_per_object.max())) if num_objects else 1
    token_of_object = torch.full((num_objects, max_cells), -1, dtype=torch.int64, device=device)
    token_of_object[tokens.object_index, token_rank] = torch.arange(tokens.num_tokens, device=device)
    max_objects = max(1, int(objects_per_scene.max())) if num_scenes else 1
    object_of_scene = torch.full((num_scenes, max_objects), -1, dtype=torch.int64, device=device)
    object_of_scene[tokens.scene_index, object_slot] = torch.arange(num_objects, device=device)
    token_scene = tokens.scene_index[tokens.object_index]
    token_scene_rank, tokens_per_scene = _ranks(token_scene, num_scenes)
    max_scene_tokens = int(tokens_per_scene.max()) if num_scenes else 0
    return _Layout(object_slot, token_rank, token_of_object, object_of_scene, token_scene_rank, max_scene_tokens)


# ---------------------------------------------------------------------------------------------- correspondences
@torch.no_grad()
def find_correspondences(tokens: ObjectTokens, k: int = 20, *, max_chunk_elements: int = 2 ** 24,
                         layout: _Layout | None = None) -> tuple[Tensor, Tensor]:
    """Top-``k`` correspondences of every token in every other object of its scene.

    For token ``t`` of object ``n`` and each other object ``m`` of the same scene, the ``k`` tokens
    ``u`` of ``m`` with the largest ``beta[t] . beta[u]``; when ``m`` has fewer than ``k`` tokens all
    of them. Not differentiable (a selection).

    Args:
        tokens: with ``beta`` (T, C_beta).
        k: K, correspondences per other object.
        max_chunk_elements: bound on the similarity block computed at once (chunked over query objects).
    Returns:
        neighbours (T, L) int64 token ids, -1 where there is no pick; valid (T, L) bool; L = O_max * K'
        with K' = min(K, P_max); column block ``m`` holds the picks in the object of scene slot ``m``.
    """
    if tokens.beta is None:
        raise ValueError("find_correspondences: ObjectTokens.beta is None (the sparse voxel attention needs the "
                         "distilled features beta to pick correspondences)")
    layout = layout or _layout(tokens)
    beta = tokens.beta
    num_objects, max_cells = layout.token_of_object.shape
    max_objects = layout.object_of_scene.shape[1]
    picks_per_object = min(k, max_cells)
    neighbours = torch.full((tokens.num_tokens, max_objects, picks_per_object), -1, dtype=torch.int64,
                            device=beta.device)
    if tokens.num_tokens == 0:
        empty = neighbours.reshape(0, max_objects * picks_per_object)
        return empty, empty >= 0
    beta_object = beta.new_zeros(num_objects, max_cells, beta.shape[1])  # (O, P_max, C_beta)
    beta_object[tokens.object_index, layout.token_rank] = beta
    present = layout.token_of_object >= 0  # (O, P_max)
    slot_of_scene = layout.object_of_scene.clamp(min=0)
    object_present = layout.object_of_scene >= 0  # (B, O_max)
    slots = torch.arange(max_objects, device=beta.device)
    chunk = max(1, max_chunk_elements // (max_cells * max_objects * max(max_cells, beta.shape[1])))
    for start in range(0, num_objects, chunk):
        query = torch.arange(start, min(start + chunk, num_objects), device=beta.device)  # (c,)
        scene = tokens.scene_index[query]
        others = slot_of_scene[scene]  # (c, O_max) object ids of the scene's slots
        similarity = torch.einsum("opc,omqc->opmq", beta_object[query], beta_object[others])  # (c, P, O_max, P)
        allowed = present[others] & object_present[scene][..., None]  # (c, O_max, P) key exists
        allowed = allowed & (slots[None] != layout.object_slot[query][:, None])[..., None]  # not the same object
        similarity.masked_fill_(~allowed[:, None], float("-inf"))
        values, index = similarity.topk(picks_per_object, dim=-1, sorted=False)  # (c, P, O_max, K')
        key_tokens = layout.token_of_object[others]  # (c, O_max, P)
        picked = torch.gather(key_tokens[:, None].expand(-1, max_cells, -1, -1), 3, index)  # (c, P, O_max, K')
        picked = picked.masked_fill(torch.isneginf(values), -1)
        rows = layout.token_of_object[query]  # (c, P) query token ids
        neighbours[rows[rows >= 0]] = picked[rows >= 0]
    neighbours = neighbours.reshape(tokens.num_tokens, -1)
    return neighbours, neighbours >= 0


# ---------------------------------------------------------------------------------------------- attention
def _pad_scenes(x: Tensor, token_scene: Tensor, token_scene_rank: Tensor, num_scenes: int,
                max_scene_tokens: int) -> Tensor:
    """Packed (T, H, D) -> padded per scene (B, H, T_max, D), padding zero."""
    out = x.new_zeros(num_scenes, max_scene_tokens, *x.shape[1:])
    return out.index_put((token_scene, token_scene_rank), x).transpose(1, 2)


def padding_bias(token_scene: Tensor, token_scene_rank: Tensor, num_scenes: int, max_scene_tokens: int,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Additive attention bias (B, 1, T_max) of vanilla scene attention.

    0 on the scene's tokens, ``finfo.min`` on the padding.
    """
    bias = torch.full((num_scenes, 1, max_scene_tokens), torch.finfo(dtype).min, dtype=dtype,
                      device=token_scene.device)
    bias[token_scene, 0, token_scene_rank] = 0
    return bias


def correspondence_bias(neighbours: Tensor, valid: Tensor, token_scene: Tensor, token_scene_rank: Tensor,
                        num_scenes: int, max_scene_tokens: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Additive attention bias (B, T_max, T_max) of sparse voxel attention.

    Entry (b, i, j) is 0 when the token of scene rank j is among the correspondences of the token of
    scene rank i (``neighbours[t][valid[t]]``), ``finfo.min`` otherwise, so that a softmax over the
    biased scores of the whole scene gives exactly zero weight outside the correspondences.
    """
    bias = torch.full((num_scenes, max_scene_tokens, max_scene_tokens), torch.finfo(dtype).min, dtype=dtype,
                      device=neighbours.device)
    query, column = torch.nonzero(valid, as_tuple=True)  # one entry per valid (token, correspondence)
    key = neighbours[query, column]
    bias[token_scene[query], token_scene_rank[query], token_scene_rank[key]] = 0
    return bias


def masked_scene_attention(query: Tensor, key: Tensor, value: Tensor, bias: Tensor, token_scene: Tensor,
                           token_scene_rank: Tensor, *, has_key: Tensor | None = None,
                           max_chunk_elements: int = 2 ** 24) -> Tensor:
    """Multi-head attention of each token over the tokens of its scene that ``bias`` allows.

    One softmax per (token, head) over the allowed keys: with the additive ``bias`` (0 allowed,
    ``finfo.min`` not) the excluded keys get a weight of exactly zero, so this is the attention over
    the allowed set alone, computed with dense matrix products on the padded scene layout (far faster
    than gathering each token's keys, and no larger than vanilla attention).

    Args:
        query, key, value: (T, H, D) packed tokens.
        bias: (B, T_max, T_max) or (B, 1, T_max) additive bias (:func:`correspondence_bias`,
            :func:`padding_bias`), in the dtype of ``query``.
        token_scene: (T,) scene of each token; token_scene_rank: (T,) rank of each token within its scene.
        has_key: (T,) bool, whether ``bias`` allows the token any key (computed from ``bias`` when None).
        max_chunk_elements: bound on the B * H * rows * T_max scores computed at once (chunked over query rows).
    Returns:
        (T, H, D); zero for a token that is allowed no key.
    """
    num_scenes, rows, max_scene_tokens = bias.shape
    if query.shape[0] == 0 or max_scene_tokens == 0:
        return query.new_zeros(query.shape)
    heads = query.shape[1]
    pad = (lambda x: _pad_scenes(x, token_scene, token_scene_rank, num_scenes, max_scene_tokens))
    query_pad, key_pad, value_pad = pad(query), pad(key), pad(value)  # (B, H, T_max, D)
    chunk = max(1, max_chunk_elements // (num_scenes * heads * max_scene_tokens))
    outputs = []
    for start in range(0, max_scene_tokens, chunk):
        part = slice(start, start + chunk)
        mask = (bias[:, part] if rows > 1 else bias)[:, None]  # (B, 1, c or 1, T_max)
        outputs.append(F.scaled_dot_product_attention(query_pad[:, :, part], key_pad, value_pad, attn_mask=mask))
    out = torch.cat(outputs, dim=2).transpose(1, 2)[token_scene, token_scene_rank]  # (T, H, D)
    if has_key is None and rows > 1:
        has_key = (bias[token_scene, token_scene_rank] == 0).any(dim=1)  # (T,)
    if has_key is not None:  # a token allowed no key (alone in its scene) receives no message
        out = out * has_key[:, None, None].to(out.dtype)
    return out


# ---------------------------------------------------------------------------------------------- modules
class MatcherBlock(nn.Module):
    """Pre-norm transformer block on packed tokens: x + attention(LN(x)), then x + MLP(LN(x)).

    ``attention=False`` keeps only the MLP half (variant A). The attention pattern is given by the
    caller as a function ``attend(query, key, value) -> (T, H, D)`` so that one block serves the
    sparse and the vanilla attention with the same W_Q, W_K, W_V.
    """

    def __init__(self, dim: int, heads: int, *, mlp_ratio: int = 4, attention: bool = True,
                 difference_messages: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MatcherBlock: dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.has_attention = attention
        self.difference_messages = difference_messages
        if attention:
            self.norm_attention = nn.LayerNorm(dim)
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor, attend: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
                has_key: Tensor | None = None) -> Tensor:
        """x (T, dim) -> (T, dim). With ``difference_messages`` each token receives the attended values minus
        its own value (what its correspondences hold that it does not), zero for a token that ``has_key``
        (T,) bool says attends to nothing."""
        if self.has_attention:
            if attend is None:
                raise ValueError("MatcherBlock.forward: this block has attention; pass attend=")
            query, key, value = self.qkv(self.norm_attention(x)).reshape(x.shape[0], 3, self.heads,
                                                                         x.shape[1] // self.heads).unbind(1)
            message = attend(query, key, value)  # (T, H, D)
            if self.difference_messages:
                own = value if has_key is None else value * has_key[:, None, None].to(value.dtype)
                message = message - own
            x = x + self.proj(message.reshape(x.shape))  # (T, H, D) -> (T, dim)
        return x + self.mlp(self.norm_mlp(x))


class VolumeHead(nn.Module):
    """3D CNN r -> 1 on an object volume, then a 2-layer MLP: (O, C, r, r, r) -> (O,) logits.

    Stride-2 convolutions halve r down to 2 and a kernel-2 convolution reaches 1; GroupNorm keeps
    every object independent of the others in the batch.
    """

    def __init__(self, in_channels: int, resolution: int = 8, channels: int = 64, *, contrast: bool = False,
                 extra_features: int = 0):
        super().__init__()
        self.contrast, self.extra_features = contrast, extra_features
        if resolution < 2 or resolution & (resolution - 1):
            raise ValueError(f"VolumeHead: resolution must be a power of two >= 2, got {resolution}")
        layers: list[nn.Module] = [nn.Conv3d(in_channels, channels, 3, padding=1), nn.GroupNorm(8, channels), nn.GELU()]
        width, size = channels, resolution
        while size > 2:
            layers += [nn.Conv3d(width, 2 * channels, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * channels), nn.GELU()]
            width, size = 2 * channels, size // 2
        layers += [nn.Conv3d(width, 2 * channels, 2), nn.GELU()]  # (O, 2c, 1, 1, 1)
        self.cnn = nn.Sequential(*layers)
        mlp_in = (4 if contrast else 2) * channels + extra_features
        self.mlp = nn.Sequential(nn.Linear(mlp_in, 2 * channels), nn.GELU(), nn.Linear(2 * channels, 1))

    def forward(self, volume: Tensor, scene_index: Tensor | None = None, extra: Tensor | None = None) -> Tensor:
        """volume (O, C, r, r, r) -> logits (O,); with ``contrast`` the scene of each object (O,) is needed,
        with ``extra_features`` the per-object inputs ``extra`` (O, extra_features) joining the MLP's input."""
        descriptor = self.cnn(volume).flatten(1)  # (O, 2c)
        if self.contrast:
            if scene_index is None:
                raise ValueError("VolumeHead(contrast=True).forward needs scene_index")
            descriptor = torch.cat([descriptor, descriptor - scene_median_of_others(descriptor, scene_index)], dim=1)
        if self.extra_features:
            if extra is None or extra.shape != (descriptor.shape[0], self.extra_features):
                got = None if extra is None else tuple(extra.shape)
                raise ValueError(f"VolumeHead(extra_features={self.extra_features}).forward needs extra of shape "
                                 f"({descriptor.shape[0]}, {self.extra_features}), got {got}")
            descriptor = torch.cat([descriptor, extra.to(descriptor.dtype)], dim=1)
        return self.mlp(descriptor).squeeze(-1)


def scene_median_of_others(x: Tensor, scene_index: Tensor) -> Tensor:
    """(O, C) -> (O, C): for each object the element-wise median of ``x`` over the *other* objects of its scene.

    The majority of a scene's objects are normal, so this is a robust prototype of "normal" that an
    object can be contrasted with. An object alone in its scene gets its own value (difference zero).
    The median of an even count is the lower of the two middle values (``torch.nanmedian``).
    """
    num_objects = x.shape[0]
    if num_objects == 0:
        return x
    _, counts = torch.unique(scene_index, return_counts=True)
    slot, _ = _ranks(scene_index, int(scene_index.max()) + 1)
    padded = x.new_full((int(scene_index.max()) + 1, int(counts.max()), x.shape[1]), float("nan"))
    padded[scene_index, slot] = x  # (B, O_max, C)
    others = padded[scene_index].clone()  # (O, O_max, C): the objects of each object's scene
    others[torch.arange(num_objects, device=x.device), slot] = float("nan")  # minus itself
    median = others.nanmedian(dim=1).values  # NaN where the scene holds no other object
    return torch.where(torch.isnan(median), x, median)


class AnomalyMatcher(nn.Module):
    """One anomaly logit per object by comparing it with the other objects of its scene.

    Args:
        in_channels: C of the token features.
        beta_channels: C_beta of ``tokens.beta`` (checked for ``variant="full"``).
        dim: token width. heads: attention heads. blocks: transformer blocks.
        k: correspondences per other object (sparse voxel attention).
        variant: ``"A"`` (no comparison), ``"B"`` (vanilla attention over the scene's cells),
            ``"C"`` (B, trained with distillation), ``"full"`` (sparse voxel attention).
        resolution: r of the object volumes.
        head_channels: width of the 3D CNN.
        contrast: the head's MLP also sees each object's descriptor minus the median descriptor of the
            other objects of its scene (:func:`scene_median_of_others`; not in the paper). Not allowed
            for ``variant="A"``, which by definition compares nothing.
        extra_features: number of per-object inputs that :meth:`forward` takes (``extra``) and the head's
            MLP sees beside the descriptor (e.g. the distances of
            :meth:`OddOneOutDetector.distance_inputs`; not in the paper).
        volume_inputs: number of per-cell input channels that :meth:`forward` takes (``volume_extra``,
            (O, volume_inputs, r, r, r)) and the head's 3D CNN reads beside the token features (e.g. where
            each object differs from the others, :meth:`OddOneOutDetector.difference_inputs`; not in the paper).
        difference_messages: each attention block passes a token the attended values minus its own value
            instead of the attended values (:class:`MatcherBlock`; not in the paper): the message states how
            the token differs from what it attends to. Not for ``variant="A"``.
        anchor: the logit is a linear function of ``extra`` (every weight 1, bias 0 at the start) plus the
            head's output, whose last layer starts at zero: an untrained matcher scores each object by the
            sum of its ``extra`` columns (with the distances, the parameter-free comparison), and training
            learns a correction to that (not in the paper). Needs ``extra_features``.
        max_chunk_elements: memory bound (elements) of one chunk of the correspondence search and of the
            attention scores.

    Example:
        >>> matcher = AnomalyMatcher(in_channels=16, beta_channels=8, dim=32, heads=4, k=5)
        >>> tokens = build_object_tokens(torch.randn(5, 16, 8, 8, 8), torch.rand(5, 8, 8, 8),
        ...                              torch.tensor([0, 0, 0, 1, 1]), threshold=0.6,
        ...                              beta=torch.randn(5, 8, 8, 8, 8))
        >>> matcher(tokens).shape
        torch.Size([5])
    """

    def __init__(self, in_channels: int, beta_channels: int = 128, dim: int = 128, heads: int = 8, blocks: int = 3,
                 k: int = 20, variant: Variant = "full", *, resolution: int = 8, head_channels: int = 64,
                 contrast: bool = False, extra_features: int = 0, volume_inputs: int = 0, anchor: bool = False,
                 difference_messages: bool = False, max_chunk_elements: int = 2 ** 24):
        super().__init__()
        if variant not in ("A", "B", "C", "full"):
            raise ValueError(f"AnomalyMatcher: variant must be 'A', 'B', 'C' or 'full', got {variant!r}")
        if k < 1:
            raise ValueError(f"AnomalyMatcher: k must be >= 1, got {k}")
        if contrast and variant == "A":
            raise ValueError("AnomalyMatcher: contrast=True compares objects, variant 'A' must not (use B, C or full)")
        if difference_messages and variant == "A":
            raise ValueError("AnomalyMatcher: difference_messages compares objects, variant 'A' must not")
        if anchor and extra_features < 1:
            raise ValueError("AnomalyMatcher: anchor=True scores the extra inputs; set extra_features >= 1")
        self.variant, self.k, self.beta_channels, self.resolution = variant, k, beta_channels, resolution
        self.max_chunk_elements = max_chunk_elements
        self.input = nn.Linear(in_channels, dim)
        self.cell_embedding = nn.Embedding(resolution ** 3, dim)
        nn.init.normal_(self.cell_embedding.weight, std=0.02)
        self.blocks = nn.ModuleList(MatcherBlock(dim, heads, attention=variant != "A",
                                                 difference_messages=difference_messages) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        self.volume_inputs = volume_inputs
        self.head = VolumeHead(dim + 1 + volume_inputs, resolution, head_channels, contrast=contrast,
                               extra_features=extra_features)
        self.anchor = None
        if anchor:
            self.anchor = nn.Linear(extra_features, 1)
            nn.init.ones_(self.anchor.weight)
            nn.init.zeros_(self.anchor.bias)
            nn.init.zeros_(self.head.mlp[-1].weight)  # the head starts as no correction
            nn.init.zeros_(self.head.mlp[-1].bias)

    @property
    def uses_distillation(self) -> bool:
        """Whether the scene model should be trained with the feature-distillation loss (C and full)."""
        return self.variant in ("C", "full")

    @property
    def uses_correspondences(self) -> bool:
        """Whether ``tokens.beta`` is needed (sparse voxel attention)."""
        return self.variant == "full"

    def _check(self, tokens: ObjectTokens) -> None:
        if tokens.resolution != self.resolution:
            raise ValueError(f"AnomalyMatcher: tokens.resolution={tokens.resolution} != resolution={self.resolution}")
        if tokens.feats.shape[1] != self.input.in_features:
            raise ValueError(f"AnomalyMatcher: tokens.feats has {tokens.feats.shape[1]} channels, "
                             f"expected in_channels={self.input.in_features}")
        if self.uses_correspondences:
            if tokens.beta is None:
                raise ValueError("AnomalyMatcher(variant='full'): tokens.beta is None; pass beta= to "
                                 "build_object_tokens (the distilled features pick the correspondences)")
            if tokens.beta.shape[1] != self.beta_channels:
                raise ValueError(f"AnomalyMatcher: tokens.beta has {tokens.beta.shape[1]} channels, "
                                 f"expected beta_channels={self.beta_channels}")

    def encode(self, tokens: ObjectTokens) -> Tensor:
        """Token features after the attention blocks: (T, dim)."""
        self._check(tokens)
        x = self.input(tokens.feats) + self.cell_embedding(tokens.linear_cells())  # (T, dim)
        attend, has_key = None, None
        if self.variant != "A":
            layout = _layout(tokens)
            token_scene = tokens.scene_index[tokens.object_index]  # (T,)
            scenes = (token_scene, layout.token_scene_rank, tokens.num_scenes, layout.max_scene_tokens)
            if self.variant == "full":
                neighbours, valid = find_correspondences(tokens, self.k, max_chunk_elements=self.max_chunk_elements,
                                                         layout=layout)
                bias = correspondence_bias(neighbours, valid, *scenes, dtype=x.dtype)  # (B, T_max, T_max)
                has_key = valid.any(dim=1)  # (T,)
            else:
                bias, has_key = padding_bias(*scenes, dtype=x.dtype), None  # (B, 1, T_max)

            def attend(query, key, value):
                return masked_scene_attention(query, key, value, bias, token_scene, layout.token_scene_rank,
                                              has_key=has_key, max_chunk_elements=self.max_chunk_elements)
        for block in self.blocks:
            x = block(x, attend, has_key)
        return self.norm(x)

    def forward(self, tokens: ObjectTokens, extra: Tensor | None = None, volume_extra: Tensor | None = None) -> Tensor:
        """Anomaly logits (O,) (positive = anomalous); ``extra`` (O, extra_features) with ``extra_features``,
        ``volume_extra`` (O, volume_inputs, r, r, r) with ``volume_inputs``."""
        x = self.encode(tokens)
        occupied = x.new_ones(x.shape[0], 1)
        volume = tokens.densify(torch.cat([x, occupied], dim=1))  # (O, dim + 1, r, r, r)
        if self.volume_inputs:
            expected = (tokens.num_objects, self.volume_inputs) + (self.resolution,) * 3
            if volume_extra is None or tuple(volume_extra.shape) != expected:
                got = None if volume_extra is None else tuple(volume_extra.shape)
                raise ValueError(f"AnomalyMatcher(volume_inputs={self.volume_inputs}).forward needs volume_extra of "
                                 f"shape {expected}, got {got}")
            volume = torch.cat([volume, volume_extra.to(volume.dtype)], dim=1)
        logits = self.head(volume, tokens.scene_index, extra)
        if self.anchor is not None:  # the head checked extra's shape
            logits = logits + self.anchor(extra.to(logits.dtype)).squeeze(-1)
        return logits
