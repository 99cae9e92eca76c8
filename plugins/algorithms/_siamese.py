"""Siamese verification networks themselves (the `siamese` plugin registers them; imported when a cell
builds one)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import TaskSuite, split_classifier
from harness.functional import GradientAlgorithm

# The paper's affine distortions (Koch et al. 2015, section 3.2), each component kept with probability 1/2:
# rotation in [-10, 10] degrees, shear in [-0.3, 0.3], scale in [0.8, 1.2], translation in [-2, 2] pixels
# of a 105-pixel image (a fraction of the side here, so it scales to any image size).
ROTATION_DEG, SHEAR, SCALE, SHIFT_FRACTION = 10.0, 0.3, (0.8, 1.2), 2.0 / 105.0


class WeightedL1(nn.Module):
    """The verification head: logit(same) = b - sum_j w_j |h1_j - h2_j| with w = softplus(raw) >= 0.

    `raw` starts where every w_j is 1 / dim (the logit starts at b minus the mean absolute difference,
    whatever the width) and b at 0."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.full((dim,), math.log(math.expm1(1.0 / dim))))
        self.bias = nn.Parameter(torch.zeros(()))

    def weights(self) -> Tensor:
        return F.softplus(self.raw)

    def forward(self, h1: Tensor, h2: Tensor) -> Tensor:
        """Logits of p(same) for embeddings broadcast against each other over the last dimension."""
        return self.bias - (h1 - h2).abs() @ self.weights()


def balanced_pairs(labels: Tensor, pairs: int, generator: torch.Generator | None = None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """(first, second, same): indices of `pairs` same-label pairs then `pairs` different-label pairs of
    distinct items of `labels`, drawn uniformly (without replacement when there are enough such pairs,
    else with), and the float target 1 / 0 of each. Drawn on the CPU from `generator` (torch's global
    generator when None)."""
    labels = labels.detach().cpu()
    n = labels.numel()
    first, second = torch.triu_indices(n, n, 1)
    same = labels[first] == labels[second]
    chosen = []
    for mask, kind in ((same, "same-class"), (~same, "different-class")):
        candidates = mask.nonzero().squeeze(1)
        if candidates.numel() == 0:
            raise ValueError(f"an episode with labels {sorted(set(labels.tolist()))} over {n} images has no "
                             f"{kind} pair of distinct images; siamese training needs both kinds (two images "
                             "of some class, and two classes)")
        if candidates.numel() >= pairs:
            pick = torch.randperm(candidates.numel(), generator=generator)[:pairs]
        else:
            pick = torch.randint(candidates.numel(), (pairs,), generator=generator)
        chosen.append(candidates[pick])
    index = torch.cat(chosen)
    target = torch.cat([torch.ones(pairs), torch.zeros(pairs)])
    return first[index], second[index], target


def affine_distort(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Each image [n, C, H, W] under its own random affine map of the paper's ranges (section 3.2);
    pixels from outside the image are background (0: ink is 1 on a dark background here)."""
    n, dtype = images.shape[0], images.dtype

    def draw(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)

    def keep(values: Tensor, neutral: float) -> Tensor:  # each component present with probability 1/2
        on = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
        return torch.where(on, values, torch.full_like(values, neutral))

    theta = keep(draw(-ROTATION_DEG, ROTATION_DEG), 0.0) * math.pi / 180.0
    shear_x, shear_y = keep(draw(-SHEAR, SHEAR), 0.0), keep(draw(-SHEAR, SHEAR), 0.0)
    scale_x, scale_y = keep(draw(*SCALE), 1.0), keep(draw(*SCALE), 1.0)
    # Translations in affine_grid's coordinates, where the image spans [-1, 1]: 2 units per side.
    shift_x = keep(draw(-SHIFT_FRACTION, SHIFT_FRACTION), 0.0) * 2.0
    shift_y = keep(draw(-SHIFT_FRACTION, SHIFT_FRACTION), 0.0) * 2.0
    cos, sin = torch.cos(theta), torch.sin(theta)
    zeros, ones = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    rotation = torch.stack([cos, -sin, sin, cos], dim=1).view(n, 2, 2)
    shear = torch.stack([ones, shear_x, shear_y, ones], dim=1).view(n, 2, 2)
    scale = torch.stack([scale_x, zeros, zeros, scale_y], dim=1).view(n, 2, 2)
    linear = rotation @ shear @ scale
    matrix = torch.cat([linear, torch.stack([shift_x, shift_y], dim=1).unsqueeze(2)], dim=2)
    grid = F.affine_grid(matrix.to(images.device, dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="zeros", align_corners=False)


class Siamese(GradientAlgorithm):
    """A Siamese verification network on a classification suite whose model ends in a Linear classifier.

    The meta-parameters are the twin's (the suite's model without its classifier, plus the sigmoid layer
    of `embedding_dim` units) and the distance head's; a state is the embedded support set
    `{"support": h(S), "labels": y}`. Meta-training (`harness.functional.GradientAlgorithm`): Adam on the
    mean balanced-pair binary cross-entropy over the batch's episodes.
    """

    def __init__(self, hparams: Any, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        body, head = split_classifier(model, "siamese")
        dim = hparams.embedding_dim or head.in_features
        layers = list(body)
        if hparams.embedding_dim:
            # In the model's dtype (float64 models get a float64 layer).
            layers += [nn.Linear(head.in_features, dim).to(head.weight.dtype), nn.Sigmoid()]
        distance = WeightedL1(dim).to(head.weight.dtype)
        net = nn.ModuleDict({"twin": nn.Sequential(*layers), "distance": distance})
        super().__init__(hparams, net, suite, backend)
        self.classes = head.out_features
        self.twin, self.distance = self.model["twin"], self.model["distance"]

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Adam: the twin at `meta_lr`, the distance head (w, b) at `head_lr`, both with `weight_decay`."""
        head = {id(p) for p in self.distance.parameters()}
        twin = [p for p in self.meta_parameters().values() if id(p) not in head]
        groups = [{"params": twin}, {"params": list(self.distance.parameters()), "lr": self.hparams.head_lr}]
        return torch.optim.Adam(groups, lr=self.hparams.meta_lr, weight_decay=self.hparams.weight_decay)

    def verification_logits(self, x1: Tensor, x2: Tensor) -> Tensor:
        """Logits of p(same) for the image pairs (x1[i], x2[i]), each side embedded as one batch."""
        return self.distance(self.twin(x1), self.twin(x2))

    def pair_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Binary cross-entropy of `pairs` same and `pairs` different pairs among the embedded images."""
        first, second, target = balanced_pairs(labels, self.hparams.pairs)
        device = embeddings.device
        logits = self.distance(embeddings[first.to(device)], embeddings[second.to(device)])
        return F.binary_cross_entropy_with_logits(logits, target.to(logits))

    def task_loss(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        # An episode's support and query images together are its labelled images, and pairs mix them;
        # but the two sets are embedded apart, as at test time (`adapt`, then `predict`), so batch norm's
        # batch statistics are computed the same way in training and testing.
        if self.hparams.distortions:
            sx, qx = affine_distort(sx), affine_distort(qx)
        return self.pair_loss(torch.cat([self.twin(sx), self.twin(qx)]), torch.cat([sy, qy]))

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[dict[str, Tensor]]:
        """The embedded support set, repeated steps+1 times: verification has no inner steps to take."""
        with torch.no_grad():
            state = {"support": self.twin(support_x), "labels": support_y}
        return [state] * (steps + 1)

    def predict(self, state: dict[str, Tensor], x: Tensor) -> Tensor:
        """[n, ways] log match probabilities: a class's best shot (`shot_rule` "max") or the log of its
        shots' mean match probability ("mean"); -inf for a class with no support image."""
        logits = self.distance(self.twin(x).unsqueeze(1), state["support"].unsqueeze(0))  # [n, shots]
        log_p = F.logsigmoid(logits).unsqueeze(-1)  # [n, s, 1]
        member = F.one_hot(state["labels"], self.classes).to(torch.bool)  # [s, ways]
        masked = log_p.masked_fill(~member, float("-inf"))  # [n, s, ways]
        if self.hparams.shot_rule == "max":
            return masked.amax(dim=1)
        counts = member.sum(0)
        mean = masked.logsumexp(dim=1) - counts.clamp_min(1).to(log_p.dtype).log()
        return mean.masked_fill(counts == 0, float("-inf"))

    def describe(self) -> dict[str, Any]:
        return {"embedding_dim": int(self.distance.raw.numel()), "pair_batch": 2 * self.hparams.pairs}
