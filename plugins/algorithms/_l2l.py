"""learn2learn's implementations as harness algorithms (the `l2l` plugin registers them; imported when a cell
builds one)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from harness import TaskSuite, split_classifier
from harness.functional import Params, TaskLoopAlgorithm, detached
from metaharness_plugins._learn2learn import import_learn2learn
from metaharness_plugins.hparams import (
    ANILHparams,
    MAMLHparams,
    MetaSGDHparams,
    ProtoNetHparams,
)

ALPHA_PREFIX = "alpha."  # names of Meta-SGD's learned learning rates, as the native metasgd names them


class _CloneAndAdapt(TaskLoopAlgorithm):
    """learn2learn's loop as its MAML and MetaSGD examples write it: `clone()` the wrapped model per task,
    `adapt()` it on the support loss, score the query; `self.learner` is the learn2learn wrapper."""

    learner: Any

    def task_loss(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        learner = self.learner.clone()
        for _ in range(self.hparams.inner_steps):
            learner.adapt(self.suite.loss(learner(sx), sy))
        return self.suite.loss(learner(qx), qy)

    def _states(self, learner: Any, x: Tensor, y: Tensor, steps: int, **adapt: Any) -> list[Params]:
        """The (detached) parameters of a clone after 0..steps `adapt()` calls on (x, y)."""
        states = [detached(dict(learner.module.named_parameters()))]
        for _ in range(steps):
            learner.adapt(self.suite.loss(learner(x), y), **adapt)
            states.append(detached(dict(learner.module.named_parameters())))
        return states


class L2LMAML(_CloneAndAdapt):
    """MAML / first-order MAML with `learn2learn.algorithms.MAML`: per task `clone()`, `adapt()` on the
    support loss `inner_steps` times, query loss. States are parameter dicts, named as in the model."""

    def __init__(self, hparams: MAMLHparams, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        l2l = import_learn2learn()
        self.learner = l2l.algorithms.MAML(self.model, lr=hparams.inner_lr, first_order=hparams.first_order)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[Params]:
        """Parameters after 0..steps first-order `adapt()` calls (test time needs no second order);
        gradients are enabled inside, so it works under the caller's `torch.no_grad()`."""
        with torch.enable_grad():
            return self._states(self.learner.clone(first_order=True), support_x, support_y, steps)


class L2LMetaSGD(_CloneAndAdapt):
    """Meta-SGD with `learn2learn.algorithms.MetaSGD`, its learning rates drawn as the native one draws
    them; meta-parameters are the weights and `alpha.<name>` (learn2learn's `lrs`)."""

    def __init__(self, hparams: MetaSGDHparams, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        l2l = import_learn2learn()
        low, high = hparams.alpha_init
        lrs = nn.ParameterList(
            nn.Parameter(low + (high - low) * torch.rand(p.shape, dtype=p.dtype).to(self.device))
            for p in self.model.parameters()
        )
        self.learner = l2l.algorithms.MetaSGD(self.model, lrs=lrs)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[Params]:
        """Parameters after 0..steps learned-rate steps (first order: nothing is differentiated later)."""
        with torch.enable_grad():
            return self._states(self.learner.clone(), support_x, support_y, steps, first_order=True)

    def meta_parameters(self) -> Params:
        names = [name for name, _ in self.model.named_parameters()]
        return {**dict(self.model.named_parameters()),
                **{ALPHA_PREFIX + name: lr for name, lr in zip(names, self.learner.lrs)}}


class L2LANIL(TaskLoopAlgorithm):
    """ANIL as learn2learn's examples build it: `MAML` wrapped around the final Linear head only, the
    body trained by the outer loop; support and query features are computed once per task."""

    def __init__(self, hparams: ANILHparams, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        self.body, head = split_classifier(model, "l2l-anil", "head (the only layer its inner loop adapts)")
        super().__init__(hparams, model, suite, backend)
        l2l = import_learn2learn()
        self.head_prefix = f"{len(model) - 1}."
        self.head = l2l.algorithms.MAML(head, lr=hparams.inner_lr, first_order=hparams.first_order)

    def task_loss(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        support, query = self.body(sx), self.body(qx)
        learner = self.head.clone()
        for _ in range(self.hparams.inner_steps):
            learner.adapt(self.suite.loss(learner(support), sy))
        return self.suite.loss(learner(query), qy)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[Params]:
        """Full parameter dicts after 0..steps head steps; the body's tensors are shared by every state."""
        body = {name: p.detach() for name, p in self.model.named_parameters()
                if not name.startswith(self.head_prefix)}
        with torch.no_grad():
            features = self.body(support_x)
        states = []
        with torch.enable_grad():
            learner = self.head.clone(first_order=True)
            for step in range(steps + 1):
                if step:
                    learner.adapt(self.suite.loss(learner(features), support_y))
                head = detached(dict(learner.module.named_parameters()))
                states.append({**body, **{self.head_prefix + name: t for name, t in head.items()}})
        return states


class L2LProtoNet(TaskLoopAlgorithm):
    """Prototypical Networks with `learn2learn.nn.PrototypicalClassifier` on the suite's embedding (the
    model less its last Linear). A state is the classifier fitted on one task's support embeddings."""

    def __init__(self, hparams: ProtoNetHparams, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        embedding, head = split_classifier(model, "l2l-protonet")
        super().__init__(hparams, embedding, suite, backend)
        self.classifier_type = import_learn2learn().nn.PrototypicalClassifier
        self.classes = head.out_features
        self.embedding = self.model

    def _fit(self, support_x: Tensor, support_y: Tensor) -> nn.Module:
        # learn2learn orders the prototypes by torch.unique(labels): logit k is class k only when every
        # class 0..ways-1 is in the support set, which the harness's episodes guarantee; check it anyway.
        present = torch.unique(support_y)
        if present.numel() != self.classes or not torch.equal(present.cpu(), torch.arange(self.classes)):
            raise ValueError(f"l2l-protonet needs every class 0..{self.classes - 1} in each support set; "
                             f"got labels {present.tolist()}")
        return self.classifier_type(support=self.embedding(support_x), labels=support_y,
                                    distance=self.hparams.distance)

    def task_loss(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        # Support and query are embedded apart, as at test time (batch norm uses batch statistics).
        return self.suite.loss(self._fit(sx, sy)(self.embedding(qx)), qy)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[nn.Module]:
        """The fitted classifier, steps+1 times: prototypes have no inner steps to take."""
        with torch.no_grad():
            classifier = self._fit(support_x, support_y)
        return [classifier] * (steps + 1)

    def predict(self, state: nn.Module, x: Tensor) -> Tensor:
        return state(self.embedding(x))


class MetaOptNet(TaskLoopAlgorithm):
    """MetaOptNet-SVM: learn2learn's `SVClassifier` (qpth QP) fitted per task on the suite's embedding
    (the model less its last Linear), the query loss back-propagated through the QP's solution into
    the embedding. A state is the classifier fitted on one task's support embeddings."""

    def __init__(self, hparams: Any, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        embedding, head = split_classifier(model, "metaoptnet")
        super().__init__(hparams, embedding, suite, backend)
        self.classifier_type = import_learn2learn().nn.SVClassifier
        dtype = head.weight.dtype
        if dtype != torch.float32:
            # learn2learn builds the QP's constant matrices in float32, and qpth needs one dtype.
            raise TypeError(f"metaoptnet needs a float32 model (learn2learn's SVClassifier builds its QP in "
                            f"float32); the suite's model is {dtype}")
        self.classes = head.out_features
        self.embedding = self.model
        self.scale = nn.Parameter(torch.ones((), device=self.device)) if hparams.learn_scale else None

    def _fit(self, support_x: Tensor, support_y: Tensor) -> nn.Module:
        return self.classifier_type(support=self.embedding(support_x), labels=support_y, ways=self.classes,
                                    C_reg=self.hparams.C_reg, max_iters=self.hparams.max_iters)

    def _logits(self, classifier: nn.Module, x: Tensor) -> Tensor:
        logits = classifier(self.embedding(x))
        return logits if self.scale is None else self.scale * logits

    def task_loss(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        return self.suite.loss(self._logits(self._fit(sx, sy), qx), qy)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[nn.Module]:
        """The SVM fitted on the support embeddings, steps+1 times (no gradient steps at test time)."""
        with torch.no_grad():
            classifier = self._fit(support_x, support_y)
        return [classifier] * (steps + 1)

    def predict(self, state: nn.Module, x: Tensor) -> Tensor:
        return self._logits(state, x)

    def meta_parameters(self) -> Params:
        scale = {} if self.scale is None else {"scale": self.scale}
        return {**dict(self.embedding.named_parameters()), **scale}
