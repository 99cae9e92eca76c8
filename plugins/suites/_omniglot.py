"""The Omniglot suite itself (the `omniglot` plugin registers it; imported when a cell builds it)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness import UsageError
from harness.specs import SPLITS
from harness.storage import cache_folder
from metaharness_plugins.fewshot.omniglot_archives import (
    episode_problem,
    find_data_root,
    load_characters,
    split_characters,
    survey_archives,
)
from metaharness_plugins.fewshot.omniglot_download import (
    PUBLISHED_MD5,
    file_md5,
)
from metaharness_plugins.fewshot.pool import ClassPool
from metaharness_plugins.fewshot.suite import FewShotSuite

MLP_WIDTHS = (256, 128, 64, 64)  # MAML section 5.2's fully connected Omniglot network (after Santoro et al.)


BATCH_NORM = ("batch statistics only (track_running_stats=False): every forward pass normalises with the "
              "statistics of its own batch, at meta-train and meta-test (transductive, as MAML's code)")


class OmniglotSuite(FewShotSuite):
    """N-way K-shot episodes from real Omniglot characters, scored by query accuracy."""

    def __init__(self, config: Any) -> None:
        """`config`: an `OmniglotConfig` (the `omniglot` plugin's)."""
        super().__init__(config)
        cfg = self.config
        root = find_data_root(cfg.archives, cfg.data_root, cfg.download, cfg.base_url, cfg.verify_md5)
        paths = [root / a for a in cfg.archives]
        # Sizes are checked against the archives' listings before the (slow, first time) decoding.
        survey = survey_archives(paths)
        self.characters = split_characters(cfg, survey)
        self.alphabets = {split: tuple(sorted({a for a, _ in chars})) for split, chars in
                          self.characters.items()}
        problem = episode_problem(cfg, self.characters, min(n for _, n in survey.values()))
        if problem:
            raise UsageError(problem)
        self.data = load_characters(paths, cfg.image_size, cache_folder(cfg.cache_dir, "omniglot"))
        # A class is (character, quarter turns); rotated copies are classes of the train split only.
        index = {character: i for i, character in enumerate(self.data.characters)}
        self.classes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for split, names in self.characters.items():
            chars = torch.tensor(sorted(index[c] for c in names), dtype=torch.int64)
            turns = 4 if cfg.rotations and split == "train" else 1
            self.classes[split] = (chars.repeat(turns), torch.arange(turns).repeat_interleave(len(chars)))
        self.set_pools({split: ClassPool.of_characters(self.data.images, *self.classes[split])
                        for split in SPLITS}, "Omniglot")

    def build_model(self) -> nn.Module:
        """conv4: 4 x [3x3 conv with 64 filters, batch norm, ReLU, 2x2 max-pool], flatten, linear to
        `ways` logits (MAML section 5.2; ProtoNets' embedding without the last layer).

        Batch norm uses batch statistics always (`track_running_stats=False`), as MAML's code does at
        train and test time (the transductive setting): it has no running buffers, so the model works
        under `torch.func.functional_call` and `vmap` over tasks, and a task's statistics never leak
        into another's. "conv4-nopool" replaces the max-pools by stride-2 convolutions and averages the
        last feature map, as MAML's Omniglot variant (cbfinn/maml, `max_pool=False`) does. "mlp" is the
        fully connected network of MAML section 5.2 (after Santoro et al. 2016): the flattened image,
        then 256, 128, 64, 64 units, each linear + batch norm (the same batch statistics) + ReLU, then
        linear to `ways` logits.
        """
        cfg = self.config
        if cfg.model == "mlp":
            widths = (cfg.image_size * cfg.image_size, *MLP_WIDTHS)
            layers: list[nn.Module] = [nn.Flatten()]
            for width_in, width_out in itertools.pairwise(widths):
                layers += [nn.Linear(width_in, width_out),
                           nn.BatchNorm1d(width_out, track_running_stats=False), nn.ReLU()]
            return nn.Sequential(*layers, nn.Linear(widths[-1], cfg.ways))
        return super().build_model()

    def describe(self) -> dict[str, object]:
        """Protocol, archives (sha256, and md5 for the official ones), splits, cache file and model."""
        cfg = self.config
        splits = {}
        for split, chars in self.characters.items():
            splits[split] = {"alphabets": list(self.alphabets[split]), "characters": len(chars),
                             "classes": len(self.classes[split][0]),
                             "images": len(chars) * int(self.data.images.shape[1])}
        archives = []
        for path, sha256 in self.data.archives:
            entry = {"path": path, "sha256": sha256}
            if Path(path).name in PUBLISHED_MD5:
                entry["md5"] = file_md5(Path(path))
            archives.append(entry)
        if cfg.model == "mlp":
            layout = "-".join(map(str, (cfg.image_size * cfg.image_size, *MLP_WIDTHS, cfg.ways)))
            architecture = f"fully connected {layout}, each hidden layer linear + batch norm + ReLU"
        else:
            down = "2x2 max-pool" if cfg.model == "conv4" else "stride 2, global average pool at the end"
            architecture = f"4 x [3x3 conv {self.FILTERS}, batch norm, ReLU, {down}], linear to {cfg.ways}"
        import PIL

        return {
            "protocol": cfg.protocol,
            "archives": archives,
            "splits": splits,
            "rotations": bool(cfg.rotations),
            "cache_file": str(self.data.cache_file),
            "pillow": PIL.__version__,
            "model": {"name": cfg.model, "architecture": architecture, "batch_norm": BATCH_NORM},
            "sampler": self.sampler_description(),
        }
