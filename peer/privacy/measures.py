"""How close the examples a teacher sends sit to its private data: distances, ratios, SSIM.

A teacher holds private inputs `private` (N, ...) and sends `sent` (M, ...), each built from a
source private example (or a mix of several). The measures here say how much of `private` the
sent examples give away:

- `nearest`: L2 distance from each point to its nearest reference row (chunked, memory bounded).
- `private_nn`: each private example's distance to its nearest *other* private example, the
  private set's own scale: a sent example much closer to a private example than that example's
  own nearest neighbour is a near-copy of it.
- `ssim`: mean structural similarity per pair of greyscale images.
- `measure_leakage` -> `LeakageStats`: per sent example, its distance to its source, to the
  nearest private example, the ratio of the latter to that private example's `private_nn`, and
  (images) the SSIM to that private example.
- `near_copy_mask`: sent examples closer to some private example than `fraction` times that
  example's `private_nn`.
- `shifted` / `aligned_nearest_ratio`: the same ratio, minimised over small whole-pixel shifts of
  each sent image: a shifted private image is far from it in pixels yet reveals it just as much.

`LeakageStats.to_dict()` has these stable keys (floats, or None where undefined: no examples,
no sources, no SSIM, or a non-finite value):

    count                          number of sent examples measured (int)
    near_copies                    how many have ratio < 1 (int)
    near_copy_share                near_copies / count
    to_nearest_median              median L2 distance to the nearest private example
    to_nearest_p05                 its 5th percentile
    to_nearest_min                 its minimum
    to_source_median               median L2 distance to the source (examples with a source)
    nearest_private_ratio_median   median of to_nearest / private_nn[nearest]
    nearest_private_ratio_p05      its 5th percentile
    ssim_median                    median SSIM to the nearest private example
    ssim_max                       maximum of that SSIM

A ratio of 0/0 (an exact copy of a private example that has an exact duplicate) counts as 0:
an exact copy is a near-copy whatever the private set looks like.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

DEFAULT_CHUNK = 1024
_REFINE = 4  # candidates per point whose distance is recomputed exactly in float64
_F32_ERR = 8 * 2.0**-23  # margin on float32 squared distances, per sqrt(dim) and unit of |a|^2 + |b|^2
_COPY_RTOL = 1e-10  # squared distances below this fraction of |a|^2 + |b|^2 count as 0 (float64 noise)


# --- inputs -----------------------------------------------------------------------------------


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _as_2d(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """`x` (N, ...) as a contiguous (N, D) CPU tensor (float64 stays float64, anything else float32)."""
    t = torch.as_tensor(_numpy(x))
    if t.ndim < 1:
        raise ValueError(f"{name} must have a leading example axis, got a scalar")
    t = t.reshape(len(t), math.prod(t.shape[1:]))
    if not torch.is_floating_point(t) or t.dtype != torch.float64:
        t = t.to(torch.float32)
    return t.contiguous()


def _check_dims(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{a_name} has {a.shape[1]} values per example but {b_name} has {b.shape[1]}")


def _check_chunk(chunk: int) -> None:
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")


# --- nearest neighbours -----------------------------------------------------------------------


def _sq_dist_chunk(a: torch.Tensor, b: torch.Tensor, a_sq: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j|^2 for a chunk of rows `a`, in one (len(a), len(b)) buffer, clamped at 0."""
    d2 = torch.mm(a, b.T).mul_(-2.0)
    d2.add_(a_sq[:, None]).add_(b_sq[None, :])
    return d2.clamp_(min=0.0)


def _refine(a: torch.Tensor, b: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float64 distances from each row of `a` to its candidate rows `cand` of `b`; the best one."""
    a64 = a.double()
    dist = torch.empty(cand.shape, dtype=torch.float64)
    for j in range(cand.shape[1]):  # a candidate at a time: (rows, D) float64 in memory, not (rows, k, D)
        dist[:, j] = (a64 - b[cand[:, j]].double()).square_().sum(dim=1)
    dist.sqrt_()
    best = dist.argmin(dim=1)
    rows = torch.arange(len(a))
    return dist[rows, best], cand[rows, best]


def _candidates(
    rows: torch.Tensor, ref: torch.Tensor, ref_sq: torch.Tensor, own: torch.Tensor | None, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest squared distances from each row to `ref` (own row excluded) and their indices."""
    d2 = _sq_dist_chunk(rows, ref, rows.square().sum(dim=1), ref_sq)
    if own is not None:
        d2[torch.arange(len(rows)), own] = math.inf
    return d2.topk(k, dim=1, largest=False)


class _Reference:
    """A reference set ready to search: centred on its mean (distances do not move, float32 error
    shrinks), in float32 for the fast pass and float64 for rows that pass leaves unsure."""

    def __init__(self, b: torch.Tensor) -> None:
        self.raw = b
        self.centre = b.double().mean(dim=0)
        self.f64 = b.double() - self.centre
        self.sq64 = self.f64.square().sum(dim=1)
        self.f32 = self.f64.float()
        self.sq32 = self.f32.square().sum(dim=1)
        self.max_sq = float(self.sq64.max())


def _nearest_chunk(
    rows: torch.Tensor, ref: _Reference, own: torch.Tensor | None, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest reference row per row: float32 search, exact float64 refinement of the k best, and
    a float64 search for rows whose float32 ranking could have missed the true nearest."""
    centred = rows.double() - ref.centre
    vals, cand = _candidates(centred.float(), ref.f32, ref.sq32, own, k)
    best_d, best_i = _refine(rows, ref.raw, cand)
    if k == len(ref.raw) - int(own is not None):
        return best_d, best_i  # every candidate was measured exactly
    # a row outside the k had float32 d2 >= vals[:, -1], so true d2 >= vals[:, -1] - err
    err = _F32_ERR * math.sqrt(rows.shape[1]) * (centred.square().sum(dim=1) + ref.max_sq)
    unsure = best_d.square() > vals[:, -1].double() - err
    if unsure.any():
        own_u = None if own is None else own[unsure]
        _, cand64 = _candidates(centred[unsure], ref.f64, ref.sq64, own_u, k)
        best_d[unsure], best_i[unsure] = _refine(rows[unsure], ref.raw, cand64)
    return best_d, best_i


def nearest(
    points: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    exclude_self: bool = False,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """L2 distance (float64) and index (int64) of each point's nearest row of `reference`.

    Inputs are flattened per example. The search runs `chunk` points at a time with one float32
    matmul on data centred on the reference mean (never more than chunk x len(reference)
    distances in memory); each point's few best candidates are then measured exactly in float64,
    so an exact copy is at distance 0. Points whose float32 ranking is too close to call for the
    rounding error (data far from its mean relative to its spread) are searched again in float64.
    `exclude_self=True` (points is reference) finds each row's nearest *other* row; an exact
    duplicate elsewhere in the set is at distance 0 and counts.
    """
    _check_chunk(chunk)
    a, b = _as_2d(points, "points"), _as_2d(reference, "reference")
    _check_dims(a, b, "points", "reference")
    if len(b) == 0:
        raise ValueError("reference is empty")
    if exclude_self and len(a) != len(b):
        raise ValueError(f"exclude_self needs points to be reference; got {len(a)} points and {len(b)} references")
    if exclude_self and len(b) < 2:
        raise ValueError("exclude_self needs at least 2 reference rows")
    dist, index = np.empty(len(a), np.float64), np.empty(len(a), np.int64)
    ref = _Reference(b)
    k = min(_REFINE, len(b) - int(exclude_self))
    with torch.no_grad():
        for start in range(0, len(a), chunk):
            rows = a[start : start + chunk]
            own = torch.arange(start, start + len(rows)) if exclude_self else None
            best_d, best_i = _nearest_chunk(rows, ref, own, k)
            dist[start : start + len(rows)] = best_d.numpy()
            index[start : start + len(rows)] = best_i.numpy()
    return dist, index


def private_nn(private: np.ndarray | torch.Tensor, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Each private example's L2 distance to its nearest other private example (float64, 0 for a duplicate)."""
    return _own_scale(private, chunk)


def _own_scale(private: np.ndarray | torch.Tensor, chunk: int) -> np.ndarray:
    return nearest(private, private, exclude_self=True, chunk=chunk)[0]


def _ratio(to_nearest: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """to_nearest / scale, with 0/0 := 0 (an exact copy) and x/0 := inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.asarray(to_nearest, np.float64) / np.asarray(scale, np.float64)
    ratio[(to_nearest == 0) & (scale == 0)] = 0.0
    return ratio


def nearest_ratio(
    points: np.ndarray | torch.Tensor,
    private: np.ndarray | torch.Tensor,
    private_nn: np.ndarray,
    chunk: int = DEFAULT_CHUNK,
    exact: bool = False,
) -> np.ndarray:
    """Per point, min over private examples j of |point - x_j| / private_nn[j]: below 1, the point
    is a near-copy of some x_j (closer to it than any other private example is); see
    nearest_ratio_index."""
    return nearest_ratio_index(points, private, private_nn, chunk, exact)[0]


def nearest_ratio_index(
    points: np.ndarray | torch.Tensor,
    private: np.ndarray | torch.Tensor,
    private_nn: np.ndarray,
    chunk: int = DEFAULT_CHUNK,
    exact: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(nearest_ratio of each point, the j of its minimum; -1 where there is no private example).

    Every private example is checked, not only the nearest one: a point may sit a bit further from
    a private example in a sparse region yet be far closer than that example's own neighbours. An
    exact copy (distance 0) has ratio 0, also of a private example with a duplicate (0/0); any
    other distance over a scale of 0 is inf. Centred float32 (fast) unless `exact` (float64).
    A caller that asks of the same private set many times builds a RatioIndex once instead.
    """
    return RatioIndex(private, private_nn, exact).ratio_index(points, chunk)


class RatioIndex:
    """A private set and its scales (private_nn) made ready for nearest_ratio_index once: centred
    on its mean, in the working precision, with its squared norms. Asking it about points gives
    exactly what nearest_ratio_index gives; the set is prepared once, not on every call (a
    teacher's release asks of its private data a dozen times a student, for a few rows each)."""

    def __init__(self, private: np.ndarray | torch.Tensor, private_nn: np.ndarray, exact: bool = False) -> None:
        self.exact = exact
        self.dtype = torch.float64 if exact else torch.float32
        self.copy_rtol = _COPY_RTOL if exact else 64 * 2.0**-23
        b = _as_2d(private, "private").double()
        scale = torch.as_tensor(np.asarray(private_nn, np.float64))
        if scale.shape != (len(b),):
            raise ValueError(f"private_nn must have shape ({len(b)},), got {tuple(scale.shape)}")
        self.centre = b.mean(dim=0)
        self.b = (b - self.centre).to(self.dtype)
        self.scale = scale.to(self.dtype)
        self.b_sq = self.b.square().sum(dim=1)

    def ratio(self, points: np.ndarray | torch.Tensor, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
        return self.ratio_index(points, chunk)[0]

    def ratio_index(
        self, points: np.ndarray | torch.Tensor, chunk: int = DEFAULT_CHUNK
    ) -> tuple[np.ndarray, np.ndarray]:
        """See nearest_ratio_index."""
        _check_chunk(chunk)
        a = _as_2d(points, "points").double()
        _check_dims(a, self.b, "points", "private")
        a = (a - self.centre).to(self.dtype)
        b, b_sq, scale = self.b, self.b_sq, self.scale
        out = np.full(len(a), np.inf)
        which = np.full(len(a), -1, dtype=np.int64)
        with torch.no_grad():
            for start in range(0, len(a), chunk):
                rows = a[start : start + chunk]
                rows_sq = rows.square().sum(dim=1)
                d2 = _sq_dist_chunk(rows, b, rows_sq, b_sq)
                copy = d2 <= self.copy_rtol * (rows_sq[:, None] + b_sq[None, :])
                ratio = d2.sqrt_().div_(scale[None, :]).masked_fill_(copy, 0.0)
                if len(b):
                    low = ratio.min(dim=1)
                    out[start : start + len(rows)] = low.values.double().numpy()
                    which[start : start + len(rows)] = low.indices.numpy()
        return out, which


def near_copy_mask(
    sent: np.ndarray | torch.Tensor,
    private: np.ndarray | torch.Tensor,
    private_nn: np.ndarray,
    fraction: float = 1.0,
    chunk: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """Bool (M,): sent examples closer to some private example j than fraction * private_nn[j]
    (nearest_ratio below `fraction`, in float64); an exact copy (distance 0) always counts."""
    if fraction < 0:
        raise ValueError(f"fraction must be >= 0, got {fraction}")
    ratio = nearest_ratio(sent, private, private_nn, chunk, exact=True)
    return (ratio < fraction) | (ratio == 0)


def shifted(images: np.ndarray, radius: int) -> np.ndarray:
    """Every whole-pixel shift of each image by (dy, dx) in [-radius, radius]^2, zero-filled:
    shape ((2 radius + 1)^2, N, ..., H, W), the unshifted images at index (2 radius + 1)^2 // 2."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    x = np.asarray(images)
    if x.ndim < 3:
        raise ValueError(f"images must be (N, [C,] H, W), got shape {x.shape}")
    h, w = x.shape[-2:]
    out = np.zeros(((2 * radius + 1) ** 2, *x.shape), dtype=x.dtype)
    k = 0
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            src_y, dst_y = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
            src_x, dst_x = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
            out[k][..., dst_y, dst_x] = x[..., src_y, src_x]
            k += 1
    return out


def aligned_nearest_ratio(sent: np.ndarray, private: np.ndarray, radius: int = 2) -> np.ndarray:
    """Per sent image: its distance to the nearest private image p at the best whole-pixel shift
    within `radius`, over p's own distance to its nearest other private image at the best shift.
    Below 1, some shift of the sent image is nearer to p than any shift of any other private image
    is: a (shifted) near-copy. Images (N, [C,] H, W), private of the same shape."""
    sent, private = np.asarray(sent, np.float32), np.asarray(private, np.float32)
    if len(sent) == 0:
        return np.zeros(0)
    if len(private) < 2:
        raise ValueError("aligned_nearest_ratio needs at least 2 private images")
    flat_private = private.reshape(len(private), -1)
    moved = shifted(sent, radius)
    d, i = nearest(moved.reshape(len(moved) * len(sent), -1), flat_private)
    d, i = d.reshape(len(moved), len(sent)), i.reshape(len(moved), len(sent))
    best = d.argmin(axis=0)
    to_nearest, index = d[best, np.arange(len(sent))], i[best, np.arange(len(sent))]
    # the scale: each nearest private image's own nearest other private image, at the best shift
    used = np.unique(index)
    own = shifted(private[used], radius).reshape(-1, len(used), flat_private.shape[1])
    reference = torch.from_numpy(flat_private)
    scale = np.full(len(used), np.inf)
    with torch.no_grad():
        for k in range(len(own)):
            dist = torch.cdist(torch.from_numpy(own[k]), reference)
            dist[torch.arange(len(used)), torch.from_numpy(used)] = torch.inf  # not itself
            scale = np.minimum(scale, dist.min(dim=1).values.double().numpy())
    return _ratio(to_nearest, scale[np.searchsorted(used, index)])


# --- SSIM -------------------------------------------------------------------------------------


def _gaussian_1d(size: int, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _as_images(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) as a float32 (N, C, H, W) tensor."""
    t = torch.as_tensor(_numpy(x)).float()
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4:
        raise ValueError(f"{name} must be images (N, H, W) or (N, C, H, W), got shape {tuple(t.shape)}")
    return t


def ssim(
    a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, window: int = 11, chunk: int = DEFAULT_CHUNK
) -> np.ndarray:
    """Mean SSIM (float64, (N,)) of each pair (a[i], b[i]) of images in [0, 1].

    The standard SSIM of Wang et al. (2004): a Gaussian window (sigma 1.5, `window` pixels,
    clipped to the image size and kept odd), C1 = 0.01^2, C2 = 0.03^2, population (co)variances,
    averaged over the valid positions (the window fully inside the image) and over channels.
    Computed in float32 (13x faster than float64 on CPU; absolute error under 1e-5, identical pairs
    give exactly 1). Equals scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1).
    """
    _check_chunk(chunk)
    x, y = _as_images(a, "a"), _as_images(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    size = min(window, x.shape[2], x.shape[3])
    size -= 1 - size % 2
    if size < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    g = _gaussian_1d(size).float()
    out = np.empty(len(x), np.float64)
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            out[start : start + chunk] = _ssim_chunk(x[start : start + chunk], y[start : start + chunk], g).numpy()
    return out


def _ssim_chunk(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per pair; the Gaussian blur is separable, so two 1-D passes over the five maps at once."""
    c1, c2 = 0.01**2, 0.03**2
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    groups = maps.shape[1]
    blurred = torch.nn.functional.conv2d(maps, g.view(1, 1, -1, 1).expand(groups, 1, -1, 1), groups=groups)
    blurred = torch.nn.functional.conv2d(blurred, g.view(1, 1, 1, -1).expand(groups, 1, 1, -1), groups=groups)
    mu_x, mu_y, xx, yy, xy = blurred.chunk(5, dim=1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).flatten(1).mean(dim=1)


# --- leakage summary --------------------------------------------------------------------------


def _f32(values: np.ndarray | Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(-1)


def _num(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _stat(values: np.ndarray, how: str) -> float | None:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return None
    if how == "median":
        return _num(np.median(values))
    if how == "p05":
        return _num(np.percentile(values, 5))
    return _num(values.min() if how == "min" else values.max())


@dataclass
class LeakageStats:
    """Per sent example (float32 arrays of one length): to_source (NaN without a source),
    to_nearest, ratio = to_nearest / private_nn[nearest], ssim_nearest (NaN if not images)."""

    to_source: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    to_nearest: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    ratio: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    ssim_nearest: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))

    def __post_init__(self) -> None:
        self.to_source, self.to_nearest = _f32(self.to_source), _f32(self.to_nearest)
        self.ratio, self.ssim_nearest = _f32(self.ratio), _f32(self.ssim_nearest)
        lengths = {len(self.to_source), len(self.to_nearest), len(self.ratio), len(self.ssim_nearest)}
        if len(lengths) != 1:
            raise ValueError(f"LeakageStats arrays differ in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.to_nearest)

    @classmethod
    def merge(cls, stats: Sequence[LeakageStats]) -> LeakageStats:
        """One LeakageStats holding the examples of all of `stats`, in order."""
        if not stats:
            return cls()
        return cls(
            *(
                np.concatenate([getattr(s, name) for s in stats])
                for name in ("to_source", "to_nearest", "ratio", "ssim_nearest")
            )
        )

    def to_dict(self) -> dict[str, float | int | None]:
        """A compact JSON-able summary; keys are listed in this module's docstring."""
        near = int(np.sum(self.ratio < 1.0))
        return {
            "count": len(self),
            "near_copies": near,
            "near_copy_share": near / len(self) if len(self) else None,
            "to_nearest_median": _stat(self.to_nearest, "median"),
            "to_nearest_p05": _stat(self.to_nearest, "p05"),
            "to_nearest_min": _stat(self.to_nearest, "min"),
            "to_source_median": _stat(self.to_source, "median"),
            "nearest_private_ratio_median": _stat(self.ratio, "median"),
            "nearest_private_ratio_p05": _stat(self.ratio, "p05"),
            "ssim_median": _stat(self.ssim_nearest, "median"),
            "ssim_max": _stat(self.ssim_nearest, "max"),
        }


def _to_source(sent: torch.Tensor, private: torch.Tensor, sources: np.ndarray | torch.Tensor) -> np.ndarray:
    """L2 from each sent example to its source: `sources` is an int index into private per sent
    example (negative: none) or the source inputs themselves (a NaN row: none)."""
    src = _numpy(sources)
    if src.ndim == 1 and np.issubdtype(src.dtype, np.integer):
        if len(src) != len(sent):
            raise ValueError(f"sources has {len(src)} indices for {len(sent)} sent examples")
        if np.any(src >= len(private)):
            raise ValueError(f"sources indexes past the {len(private)} private examples")
        has = src >= 0
        out = np.full(len(sent), np.nan)
        out[has] = (sent[has].double() - private[src[has]].double()).norm(dim=1).numpy()
        return out
    src_t = _as_2d(src, "sources")
    if src_t.shape != sent.shape:
        raise ValueError(f"sources must be indices (M,) or inputs shaped like sent; got {src.shape}")
    return (sent.double() - src_t.double()).norm(dim=1).numpy()


def measure_leakage(
    sent: np.ndarray | torch.Tensor,
    private: np.ndarray | torch.Tensor,
    private_nn: np.ndarray | None = None,
    sources: np.ndarray | torch.Tensor | None = None,
    image: bool = True,
    chunk: int = DEFAULT_CHUNK,
) -> LeakageStats:
    """LeakageStats of `sent` against `private`.

    `private_nn` (from `private_nn(private)`) is computed when not given; pass it when measuring
    several batches against one private set. `sources` gives each sent example's source: an int
    index into `private` (negative: built from a mix, no single source) or the source inputs.
    `image=True` also measures SSIM to the nearest private example (inputs must be images).
    """
    sent, private = _numpy(sent), _numpy(private)
    flat_sent, flat_private = _as_2d(sent, "sent"), _as_2d(private, "private")
    _check_dims(flat_sent, flat_private, "sent", "private")
    if image and sent.ndim not in (3, 4):
        raise ValueError(f"image=True needs sent as images (M, H, W) or (M, C, H, W), got shape {sent.shape}")
    scale = _own_scale(private, chunk) if private_nn is None else np.asarray(private_nn, np.float64)
    if scale.shape != (len(flat_private),):
        raise ValueError(f"private_nn must have shape ({len(flat_private)},), got {scale.shape}")
    if len(flat_sent) == 0:
        return LeakageStats()
    dist, index = nearest(flat_sent, flat_private, chunk=chunk)
    to_source = np.full(len(dist), np.nan) if sources is None else _to_source(flat_sent, flat_private, sources)
    sims = np.full(len(dist), np.nan)
    if image:
        sims = ssim(sent, private[index], chunk=chunk)
    return LeakageStats(to_source, dist, _ratio(dist, scale[index]), sims)
