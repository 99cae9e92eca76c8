"""Siamese networks: Koch, Zemel & Salakhutdinov (2015), "Siamese Neural Networks for One-shot Image
Recognition", ICML Deep Learning Workshop.

A verification network learns whether two images show the same class: both go through one shared
(twin) embedding h, and p(same | x1, x2) = sigmoid(b - sum_j w_j |h(x1)_j - h(x2)_j|), the weighted L1
distance of the twin embeddings fed to a single sigmoid unit (section 3.1, equation 1). It is trained
on same / different pairs of meta-training classes with binary cross-entropy (section 3.1). A one-shot
query is labelled by its best-matching support image, argmax_c p(same | x, x_c) (section 4.3).

Choices for the harness:
- Pairs come from the episodes the harness samples: each meta-training episode's support and query
  images (with their labels) give `pairs` same-class pairs and as many different-class pairs, drawn
  uniformly from all of the episode's pairs of distinct images, so the binary task is balanced (the
  paper's training set is balanced too, section 4.1).
- The twin is the suite's model without its final Linear classifier (conv4 on the image suites, the
  shared `backbones.conv4`), optionally topped, as in the paper, by a fully connected layer of sigmoid
  units (`embedding_dim`; the paper's has 4096 units on 105 x 105 images). The paper's own conv stack
  (10x10, 7x7, 4x4, 4x4 filters) is sized for 105-pixel images; conv4 is this harness's common 28-pixel
  backbone, so rows differ in the head and loss, not in the feature extractor. Without the sigmoid layer
  (the default) the twin learns faster at the harness's budgets (glyphs 5-way 1-shot, 120 episodes:
  test accuracy 0.99 without, 0.96 with 256 units).
- The weights w_j are kept non-negative (w = softplus of a free parameter), so the score is a
  decreasing function of a weighted L1 distance: a query identical to a support image scores highest.
  The paper leaves alpha_j unconstrained. The sigmoid unit has a bias b.
- The paper trains with SGD and momentum, per-layer learning rates and L2 penalties; here Adam (the
  harness's budgets are far shorter than the paper's 200 epochs) with an optional `weight_decay`, at
  `meta_lr` for the twin and at the larger `head_lr` for w and b: they start at the scale of a mean
  absolute difference and must reach that of confident logits, which Adam's steps of about `meta_lr`
  per parameter take thousands of episodes to do (glyphs 5-way 1-shot after 160 episodes: test
  accuracy 0.91 with the head at 0.001, 0.94 at 0.01, 0.98 at 0.1). The paper's affine distortions of
  training images (section 3.2) are the option `distortions`.
- k-shot: a class's score is its best-matching shot (`shot_rule` "max") or the mean match probability
  over its shots ("mean").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness import AlgorithmSpec, check_ranges, forward_attributes, hookimpl

SHOT_RULES = ("max", "mean")
MAX_PAIRS = 100_000
MAX_EMBEDDING = 1 << 16


@dataclass(frozen=True)
class SiameseHparams:
    """Defaults: the paper's minibatch of 128 pairs per step; Adam at the usual 1e-3 for the twin.

    meta_lr: Adam's step size for the twin.
    head_lr: Adam's step size for the distance head (the weights w_j and the bias b).
    meta_batch_size: episodes whose pairs make one Adam step.
    pairs: same-class pairs drawn from each episode, and as many different-class pairs (64 + 64 = the
        paper's minibatch of 128 pairs).
    embedding_dim: sigmoid units of a fully connected layer on top of the backbone (the paper's has
        4096); 0 (the default) compares the backbone's features directly.
    shot_rule: "max" scores a class by its best-matching support image (the paper's one-shot rule),
        "mean" by its shots' mean match probability; the same with one shot.
    distortions: apply the paper's random affine distortions (section 3.2) to meta-training images.
    weight_decay: Adam's L2 penalty on every weight (the paper penalises each layer; 0 = none).
    """

    meta_lr: float = 0.001
    head_lr: float = 0.1
    meta_batch_size: int = 1
    pairs: int = 64
    embedding_dim: int = 0
    shot_rule: str = "max"
    distortions: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("meta_batch_size", "pairs"), non_negative=("embedding_dim",),
                     positive=("meta_lr", "head_lr"))
        if self.pairs > MAX_PAIRS:
            raise ValueError(f"pairs must be from 1 to {MAX_PAIRS:,} same-class pairs per episode, "
                             f"got {self.pairs}")
        if self.embedding_dim > MAX_EMBEDDING:
            raise ValueError(f"embedding_dim must be from 0 to {MAX_EMBEDDING:,} units, "
                             f"got {self.embedding_dim}")
        if self.shot_rule not in SHOT_RULES:
            raise ValueError(f"shot_rule must be one of {', '.join(SHOT_RULES)}, got {self.shot_rule!r}")
        if not isinstance(self.weight_decay, (int, float)) or not 0 <= self.weight_decay < 1:
            raise ValueError(f"weight_decay must be a number in [0, 1), got {self.weight_decay!r}")


def check_suite(hparams: Any, suite_name: str, suite_config: Any) -> str:
    """'' unless affine distortions are asked for on a suite without images (no `image_size`)."""
    if getattr(hparams, "distortions", False) and not hasattr(suite_config, "image_size"):
        return (f"distortions are affine maps of images, but suite {suite_name!r} has no image_size option "
                "(not an image suite); set distortions = false")
    return ""


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="siamese",
            factory="metaharness_plugins.algorithms._siamese:Siamese",
            hparams=SiameseHparams,
            task_kinds=frozenset({"classification"}),
            description="Siamese verification network (weighted L1 of twin embeddings) trained on "
                        "same/different pairs; a query takes its best-matching support image's class",
            paper="Koch, Zemel & Salakhutdinov 2015, Siamese Neural Networks for One-shot Image Recognition "
                  "(ICML Deep Learning Workshop)",
            check=check_suite,
        )
    ]


# The implementation lives in _siamese.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._siamese")
