"""A split's classes as one pool of uint8 images, and the native vectorised N-way K-shot sampler over it.

A pool is what every image suite reduces its data to: rows of uint8 images [N, C, H, W] (255 = full
intensity), and per class the slice of rows it owns (offset, count). Rotated classes (Omniglot's turned
copies of its characters) are materialised once as rows of their own, so sampling is only gathering.
Episodes are drawn from a torch generator alone, so they are a pure function of (pool, episode sizes,
generator state).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness import TaskBatch

#: A pool whose images as float32 take at most this much is converted once (Omniglot: 36 MiB for the small
#: sets' 600 training classes), which halves the time of a 20-way 5-shot meta-batch; larger ones are not.
FLOAT_POOL_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ClassPool:
    """One split's classes: class c is images[offsets[c] : offsets[c] + counts[c]]. `fill(classes)`, when
    given, is called with the class indices an episode is about to read, so a suite can produce rows
    lazily (glyph pools)."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    offsets: torch.Tensor  # int64 [classes]
    counts: torch.Tensor  # int64 [classes]
    fill: Callable[[torch.Tensor], None] | None = None

    def __post_init__(self) -> None:
        images = self.images
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else repr(images)
            raise ValueError(f"a class pool's images must be a uint8 tensor [N, C, H, W], got {got}")
        vectors = (self.offsets, self.counts)
        if any(v.dim() != 1 or v.shape != self.offsets.shape or v.dtype != torch.int64 for v in vectors):
            raise ValueError("offsets and counts must be int64 vectors of one length, got "
                             + " and ".join(f"{v.dtype} {tuple(v.shape)}" for v in vectors))
        if len(self.offsets) and (int(self.offsets.min()) < 0 or int(self.counts.min()) < 1
                                  or int((self.offsets + self.counts).max()) > len(images)):
            raise ValueError(f"every class's rows offsets[c] : offsets[c] + counts[c] must be a non-empty "
                             f"slice of the pool's {len(images)} images")

    @classmethod
    def of_characters(
        cls,
        images: torch.Tensor,
        characters: torch.Tensor,
        turns: torch.Tensor | None = None,
        fill: Callable[[torch.Tensor], None] | None = None,
    ) -> ClassPool:
        """Classes that each own one row of `images` uint8 [characters, drawings, (C,) H, W]: class i is
        character characters[i] (all its drawings) turned by turns[i] quarter turns counter-clockwise
        (`torch.rot90`; default 0). Unturned, the pool is a view of `images`, which `fill` may fill
        later; with turns, the classes' images are copied once, turned, into rows of their own."""
        if images.dim() == 4:
            images = images.unsqueeze(2)
        characters = characters.to(torch.int64)
        if len(characters) and (int(characters.min()) < 0 or int(characters.max()) >= len(images)):
            raise ValueError(f"character indices must lie in 0..{len(images) - 1}")
        drawings = int(images.shape[1])
        counts = torch.full_like(characters, drawings)
        if turns is None or not bool(turns.any()):
            character_fill = None
            if fill is not None:
                def character_fill(classes: torch.Tensor) -> None:
                    fill(characters[classes])
            return cls(images.flatten(0, 1), characters * drawings, counts, character_fill)
        turns = turns.to(torch.int64)
        if turns.shape != characters.shape:
            raise ValueError(f"characters and turns must be vectors of one length, got {tuple(characters.shape)} "
                             f"and {tuple(turns.shape)}")
        if int(turns.min()) < 0 or int(turns.max()) > 3:
            raise ValueError("quarter turns must lie in 0..3")
        if fill is not None:
            raise ValueError("a pool of turned classes is copied when built, so it cannot be filled later")
        turned = torch.empty(len(characters), *images.shape[1:], dtype=images.dtype)
        for k in range(4):
            chosen = turns == k
            if bool(chosen.any()):
                turned[chosen] = torch.rot90(images[characters[chosen]], k, dims=(-2, -1))
        return cls(turned.flatten(0, 1), torch.arange(len(characters)) * drawings, counts)

    def _floats(self) -> torch.Tensor:
        """The images as float32 in [0, 1] (each x / 255, exactly as a sampled uint8 image is converted),
        made once when that copy is at most FLOAT_POOL_BYTES, so sampling only gathers rows; else the
        uint8 images themselves (the big image sets, and pools filled lazily)."""
        cached = self.__dict__.get("_float_images")
        if cached is None:
            small = self.images.numel() * 4 <= FLOAT_POOL_BYTES and self.fill is None
            cached = self.images.to(torch.float32).div_(255.0) if small else self.images
            object.__setattr__(self, "_float_images", cached)
        return cached

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    def smallest_class(self) -> tuple[int, int]:
        """(index, image count) of the class with the fewest images."""
        smallest = int(self.counts.argmin())
        return smallest, int(self.counts[smallest])

    def sample(self, n_tasks: int, ways: int, shots: int, query: int, generator: torch.Generator) -> TaskBatch:
        """`n_tasks` episodes of `ways` distinct classes with `shots` + `query` distinct images each.

        support_x [n, ways*shots, C, H, W] float32 in [0, 1], labels int64 0..ways-1 class-major (all
        shots of label 0 first), query_x likewise with `query` images per class. The `ways` smallest of
        uniform float64 keys, in ascending order, are the first entries of a uniform random permutation:
        distinct classes in random order, so label = position is already a random relabelling; the same
        within each class, where keys past the class's own count are pushed to the end (2 > any uniform
        key). (`topk` picks exactly what a stable `argsort` would, ties of float64 keys aside, at a
        fraction of the cost.)
        """
        per_class = shots + query
        keys = torch.rand(n_tasks, self.num_classes, generator=generator, dtype=torch.float64)
        picked = keys.topk(ways, dim=1, largest=False, sorted=True).indices
        most = int(self.counts.max())
        keys = torch.rand(n_tasks, ways, most, generator=generator, dtype=torch.float64)
        if int(self.counts.min()) != most:
            keys.masked_fill_(torch.arange(most) >= self.counts[picked].unsqueeze(-1), 2.0)
        positions = keys.topk(per_class, dim=2, largest=False, sorted=True).indices
        if self.fill is not None:
            self.fill(picked.unique())
        rows = self.offsets[picked].unsqueeze(-1) + positions  # [n, ways, per_class]
        shape = self.images.shape[1:]
        source = self._floats()

        def floats(part: torch.Tensor, count: int) -> torch.Tensor:
            # index_select gathers contiguous rows far faster than advanced indexing.
            picked_rows = source.index_select(0, part.reshape(-1)).view(n_tasks, ways * count, *shape)
            return picked_rows if source.dtype == torch.float32 else picked_rows.to(torch.float32).div_(255.0)

        labels = torch.arange(ways)
        return TaskBatch(
            support_x=floats(rows[:, :, :shots], shots),
            support_y=labels.repeat_interleave(shots).expand(n_tasks, -1).clone(),
            query_x=floats(rows[:, :, shots:], query),
            query_y=labels.repeat_interleave(query).expand(n_tasks, -1).clone(),
        )


def episodes(x: torch.Tensor, shots: int) -> TaskBatch:
    """The TaskBatch of uint8 (or float) images x [n, ways, shots + query, C, H, W]: the first `shots`
    of each class support, the rest query, float32 in [0, 1], labels class-major."""
    n, ways, per_class = x.shape[:3]
    shape = x.shape[3:]
    query = per_class - shots

    def floats(part: torch.Tensor, count: int) -> torch.Tensor:
        # Split while still uint8 (1 byte a pixel), then convert each part once to float32.
        part = part.reshape(n, ways * count, *shape)
        return part.to(torch.float32).div_(255.0) if part.dtype == torch.uint8 else part

    labels = torch.arange(ways)
    return TaskBatch(
        support_x=floats(x[:, :, :shots], shots),
        support_y=labels.repeat_interleave(shots).expand(n, -1).clone(),
        query_x=floats(x[:, :, shots:], query),
        query_y=labels.repeat_interleave(query).expand(n, -1).clone(),
    )
