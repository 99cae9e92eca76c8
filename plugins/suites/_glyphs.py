"""The glyph suite itself: stroke programs, the rasteriser and the suite (the `glyphs` plugin registers it;
imported when a cell builds it)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from harness import TaskBatch
from metaharness_plugins.fewshot.config import BATCH_NORM
from metaharness_plugins.fewshot.pool import ClassPool, episodes
from metaharness_plugins.fewshot.suite import FewShotSuite

# The universe of glyphs (changing any of these changes every class: bump the spec's version).
STROKES = (2, 5)  # strokes per class, inclusive
POINTS = 4  # control points per stroke: a cubic Bezier curve
SAMPLES = 32  # points per curve the rasteriser integrates over (at most ~1.3 px apart at 28 px)
CHUNK = 256  # drawings rendered at once
SIGMA = 1.0  # width of the rasteriser's Gaussian, pixels at 28 px
STEP = (0.15, 0.35)  # length of a control-point step of the random walk, in unit-square units
TURN = 1.0  # std of the walk's turn per step, radians
MARGIN = 0.12  # control points stay in [MARGIN, 1 - MARGIN]
ATTACH = 0.6  # probability that a later stroke starts at an end of an earlier one
# Per-drawing jitter (28-pixel units scale with image_size).
POINT_JITTER = 0.025  # std of each control point's displacement, unit-square units
ROTATION = 10.0  # degrees, uniform in +-
SCALE = (0.9, 1.1)
SHEAR = 0.15  # uniform in +-
SHIFT = 2.0  # pixels at 28 px, uniform in +-
WIDTH = (0.7, 1.2)  # stroke half-width in pixels at 28 px; the ink then fades over one more pixel



def _class_seed(seed: int, c: int, stream: int = 0) -> int:
    """A 63-bit generator seed for class c of universe `seed` (splitmix64-style mixing); stream 0 seeds
    the class's stroke program, stream 1 its pool of drawings."""
    z = (seed * 0x9E3779B97F4A7C15 + c * 0xBF58476D1CE4E5B9 + stream * 0xD1B54A32D192ED03
         + 0x94D049BB133111EB) % (1 << 64)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    return (z ^ (z >> 31)) >> 1


def stroke_program(seed: int, c: int) -> tuple[torch.Tensor, int]:
    """Class c's control points [STROKES[1], POINTS, 2] in the unit square (x right, y down; unused
    strokes zero) and its number of strokes, drawn from a generator seeded by (seed, c) alone."""
    g = torch.Generator().manual_seed(_class_seed(seed, c))
    u = iter(torch.rand(1 + STROKES[1] * (5 + 3 * (POINTS - 1)), generator=g, dtype=torch.float64).tolist())
    strokes = STROKES[0] + min(int(next(u) * (STROKES[1] - STROKES[0] + 1)), STROKES[1] - STROKES[0])
    lo, hi = MARGIN, 1.0 - MARGIN
    points = torch.zeros(STROKES[1], POINTS, 2)
    ends: list[tuple[float, float]] = []
    for s in range(strokes):
        attach, pick, x0, y0 = next(u), next(u), next(u), next(u)
        if ends and attach < ATTACH:
            x, y = ends[min(int(pick * len(ends)), len(ends) - 1)]
        else:
            x, y = lo + (hi - lo) * x0, lo + (hi - lo) * y0
        angle = 2 * math.pi * next(u)
        walk = [(x, y)]
        for _ in range(POINTS - 1):
            # Box-Muller turn, then a step; reflect off the margins so strokes stay inside.
            u1, u2 = max(next(u), 1e-12), next(u)
            angle += TURN * math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2) / 2
            step = STEP[0] + (STEP[1] - STEP[0]) * next(u)
            x, y = x + step * math.cos(angle), y + step * math.sin(angle)
            if not lo <= x <= hi:
                x, angle = min(max(2 * (lo if x < lo else hi) - x, lo), hi), math.pi - angle
            if not lo <= y <= hi:
                y, angle = min(max(2 * (lo if y < lo else hi) - y, lo), hi), -angle
            walk.append((x, y))
        points[s] = torch.tensor(walk)
        ends += [walk[0], walk[-1]]
    return points, strokes


_T = torch.linspace(0.0, 1.0, SAMPLES, dtype=torch.float64)


BEZIER = torch.stack([(1 - _T) ** 3, 3 * (1 - _T) ** 2 * _T, 3 * (1 - _T) * _T**2, _T**3], dim=1).float()


def render(points: torch.Tensor, strokes: torch.Tensor, width: torch.Tensor, size: int) -> torch.Tensor:
    """Anti-aliased images [N, size, size] in [0, 1] of N drawings.

    points [N, S, POINTS, 2]: control points in pixel units (pixel i covers [i, i + 1)); strokes [N]:
    how many of the S strokes each drawing uses; width [N]: stroke half-width in pixels. A pixel's ink
    is clamp(width + 0.5 - d, 0, 1), d its distance to the nearest stroke.

    d comes from a line integral of a Gaussian along the curves, which is separable and so a batched
    matrix product: for a straight stroke, integral of exp(-|p - c(s)|^2 / sigma^2) ds equals
    sqrt(pi) sigma exp(-d^2 / sigma^2), so d = sigma sqrt(-log(integral / (sqrt(pi) sigma))). The
    integral is a sum over SAMPLES points per curve weighted by their arc length, so it does not
    depend on the curve's parametrisation; where strokes cross or bend, the sum only grows, which
    saturates the ink. This is ~50x faster on CPU than the distance from every pixel to every segment.
    """
    n, s = points.shape[:2]
    curve = torch.einsum("tk,nskd->nstd", BEZIER.to(points.dtype), points)  # [N, S, SAMPLES, 2]
    step = (curve[:, :, 1:] - curve[:, :, :-1]).norm(dim=-1)  # [N, S, SAMPLES-1]
    weight = F.pad(step, (0, 1)) / 2 + F.pad(step, (1, 0)) / 2  # trapezoid rule: arc length per sample
    used = torch.arange(s).unsqueeze(0) < strokes.unsqueeze(1)
    weight = (weight * used.unsqueeze(-1)).reshape(n, -1, 1)  # [N, M, 1]
    curve = curve.reshape(n, -1, 2)
    sigma = SIGMA * size / 28.0
    centre = torch.arange(size, dtype=points.dtype) + 0.5
    # Exponents clamped at -30: far from the curve exp would underflow to denormals, which are slow.
    gx = torch.exp(((centre - curve[:, :, :1]) / sigma).square_().clamp_(max=30.0).neg_()) * weight
    gy = torch.exp(((centre - curve[:, :, 1:]) / sigma).square_().clamp_(max=30.0).neg_())  # [N, M, H]
    total = torch.bmm(gy.transpose(1, 2), gx) / (math.sqrt(math.pi) * sigma)  # [N, H, W]
    dist = sigma * torch.sqrt(-torch.log(total.clamp_(1e-30, 1.0)))
    return (width.view(n, 1, 1) + 0.5 - dist).clamp_(0.0, 1.0)


class GlyphsSuite(FewShotSuite):
    """N-way K-shot episodes of procedural glyphs, scored by query accuracy."""

    def __init__(self, config: Any) -> None:
        """`config`: a `GlyphsConfig` (the `glyphs` plugin's)."""
        super().__init__(config)
        n = self.config.num_classes
        self.ranges = self.config.ranges
        # Stroke programs are drawn on first use and kept: a suite touches only the classes it samples.
        self._points = torch.zeros(n, STROKES[1], POINTS, 2)
        self._strokes = torch.zeros(n, dtype=torch.long)
        self._known = torch.zeros(n, dtype=torch.bool)
        cfg, size = self.config, self.config.image_size
        # Pools likewise; `empty` so only the pages of rendered classes are ever touched (4000 classes of
        # 20 drawings at 28 px would be 63 MB), and `_pooled` says which rows hold drawings.
        self._pool = torch.empty(n if cfg.drawings else 0, cfg.drawings, size, size, dtype=torch.uint8)
        self._pooled = torch.zeros(n, dtype=torch.bool)
        if cfg.drawings:
            # Every class is its own "character", unrotated; its pool is rendered when first sampled.
            self.set_pools({split: ClassPool.of_characters(self._pool, torch.arange(lo, hi), fill=self._render_pools)
                            for split, (lo, hi) in self.ranges.items()}, "glyphs")

    def programs(self, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Control points [..., S, POINTS, 2] (unit square) and stroke counts [...] of class indices."""
        for c in classes[~self._known[classes]].unique().tolist():
            self._points[c], self._strokes[c] = stroke_program(self.config.seed, c)
            self._known[c] = True
        return self._points[classes], self._strokes[classes]

    def pool(self, classes: torch.Tensor) -> torch.Tensor:
        """The pools uint8 [..., drawings, H, W] (ink = 255) of class indices, rendering missing ones.

        Class c's pool is rendered by `draw` from a generator seeded by (seed, c): it depends on the
        universe, the class, `drawings` and `image_size` only, not on num_classes nor on which classes
        were sampled before."""
        if not self.config.drawings:
            raise ValueError("this suite has no pools of drawings (drawings=0 renders each drawing afresh)")
        self._render_pools(classes)
        return self._pool[classes]

    def _render_pools(self, classes: torch.Tensor) -> None:
        for c in classes[~self._pooled[classes]].unique().tolist():
            generator = torch.Generator().manual_seed(_class_seed(self.config.seed, c, stream=1))
            images = self.draw(torch.full((self.config.drawings,), c), generator)
            self._pool[c] = images.mul_(255.0).round_().to(torch.uint8)
            self._pooled[c] = True

    def draw(self, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One jittered drawing of each class index in `classes` (any shape): float32 [..., H, W]."""
        size, shape = self.config.image_size, classes.shape
        points, strokes = self.programs(classes.reshape(-1))
        n, px = points.shape[0], size / 28.0
        noise = torch.randn(n, *points.shape[1:], generator=generator) * POINT_JITTER
        u = torch.rand(n, 6, generator=generator)
        angle = math.radians(ROTATION) * (2 * u[:, 0] - 1)
        scale = SCALE[0] + (SCALE[1] - SCALE[0]) * u[:, 1]
        shear = SHEAR * (2 * u[:, 2] - 1)
        shift = SHIFT * px * (2 * u[:, 3:5] - 1)
        width = px * (WIDTH[0] + (WIDTH[1] - WIDTH[0]) * u[:, 5])
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        # Rotation-scale after a shear along x, about the image centre; Bezier curves are affine
        # invariant, so mapping the control points maps the whole curve.
        rows = [torch.stack([cos, cos * shear - sin], -1), torch.stack([sin, sin * shear + cos], -1)]
        matrix = torch.stack(rows, -2)
        centred = (points + noise - 0.5) * size
        mapped = torch.einsum("nij,nskj->nski", matrix, centred) + size / 2 + shift[:, None, None, :]
        # In chunks: a whole meta-batch at once spills the caches and renders at half the speed.
        images = [render(mapped[i : i + CHUNK], strokes[i : i + CHUNK], width[i : i + CHUNK], size)
                  for i in range(0, n, CHUNK)]
        return torch.cat(images).reshape(*shape, size, size)

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        """`n_tasks` episodes: support_x [n, ways*shots, 1, H, W] float32 in [0, 1] (ink = 1), labels
        int64 in 0..ways-1, class-major (all shots of label 0 first); query_x likewise with `query`.
        With pools, distinct drawings of each class's pool (`ClassPool.sample`); else fresh drawings."""
        if self.config.drawings:
            return super().sample(n_tasks, generator, split)
        self.check_request(n_tasks, split)
        cfg = self.config
        lo, hi = self.ranges[split]
        # The first `ways` entries of a uniform random permutation, as `ClassPool.sample` picks classes.
        keys = torch.rand(n_tasks, hi - lo, generator=generator, dtype=torch.float64)
        picked = keys.argsort(dim=1, stable=True)[:, : cfg.ways] + lo
        per_class = cfg.shots + cfg.query
        x = self.draw(picked.unsqueeze(-1).expand(-1, -1, per_class), generator).unsqueeze(3)
        return episodes(x, cfg.shots)

    def describe(self) -> dict[str, object]:
        return {
            "seed": self.config.seed,
            "splits": {split: {"classes": [lo, hi]} for split, (lo, hi) in self.ranges.items()},
            "program": {"strokes": list(STROKES), "bezier_points": POINTS,
                        "step": list(STEP), "turn": TURN, "margin": MARGIN, "attach": ATTACH},
            "jitter": {"point_std": POINT_JITTER, "rotation_deg": ROTATION, "scale": list(SCALE),
                       "shear": SHEAR, "shift_px28": SHIFT, "half_width_px28": list(WIDTH)},
            "render": {"samples_per_stroke": SAMPLES, "sigma_px28": SIGMA},
            "sampler": self.sampler_description(),
            "model": {"name": self.config.model, "batch_norm": BATCH_NORM},
        }
