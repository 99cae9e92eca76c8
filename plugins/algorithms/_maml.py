"""MAML itself, on harness.functional (the `maml` plugin registers it; imported when a cell builds it)."""

from __future__ import annotations

import torch

from harness.functional import GradientAlgorithm, Params, inner_loop, snapshot


class MAML(GradientAlgorithm):
    """MAML (or first-order MAML when `hparams.first_order`) on any suite whose `loss` is differentiable.

    The meta-parameters are the model's own `nn.Parameter`s on the backend's device; adaptation
    never modifies them, it returns new dicts of tensors.
    """

    @property
    def second_order(self) -> bool:  # type: ignore[override]
        return not self.hparams.first_order

    def task_loss(self, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor) -> torch.Tensor:
        """The query loss after `inner_steps` SGD steps on the support set, differentiable w.r.t. the
        meta-parameters (second derivatives included unless first order)."""
        hp = self.hparams
        # Looping over a conv net's tasks on the CPU, `train_loss` is harness.sequential's faster forward
        # (the same meta-gradient in float64), which takes torch.autograd inner gradients.
        adapted = inner_loop(self.train_loss, self.params, sx, sy, hp.inner_steps, hp.inner_lr,
                             first_order=hp.first_order, autograd=self.fast_forward is not None)[-1]
        return self.train_loss(adapted, qx, qy)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> list[Params]:
        """States after 0..steps inner SGD steps on one task (the training-time inner loop).

        Works under `torch.no_grad()`: `torch.func.grad` computes its gradient regardless of the
        caller's grad mode, and the states are detached from the meta-parameters.
        """
        return inner_loop(self.loss, snapshot(self.params), support_x, support_y, steps, self.hparams.inner_lr,
                          first_order=True)
