"""Few-shot classification on real Omniglot (Lake, Salakhutdinov & Tenenbaum 2015, "Human-level concept
learning through probabilistic program induction", Science) with the N-way K-shot episodes, conv4 and
fully connected models of Finn, Abbeel & Levine 2017 (MAML, ICML) and Snell, Swersky & Zemel 2017
(ProtoNets, NeurIPS).

The suite reads the authors' zip archives in place (never extracted), decodes every drawing once to
uint8 [characters, drawings, H, W] with strokes bright (255 = ink) and caches that tensor on disk,
keyed by the archives' sha256 and the image size. Two protocols:

- "alphabet" meta-trains, validates and tests on disjoint alphabets (see `alphabet_splits`), which works
  with the two small background sets alone;
- "standard" is the split most papers use (Vinyals et al. 2016; Santoro et al. 2016; MAML section 5.2):
  all 1623 characters of images_background.zip and images_evaluation.zip, 1200 for meta-training (of
  which the last 100 validate, as MAML's code holds out 100) with rotations by 90/180/270 degrees as new
  classes, and the other 423 for meta-test (see `standard_splits` for the fixed character order).
  The two full archives are downloaded with their published md5 when absent (`omniglot_download`).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness import HarnessError, TaskBatch, TaskSuite, TaskSuiteSpec, UsageError, hookimpl
from harness.cache import save_atomic
from metaharness_plugins.backbones import conv4
from metaharness_plugins.suites.l2l_sampler import TaskDatasetSampler, check_sampler, missing_learn2learn
from metaharness_plugins.suites.omniglot_download import (
    DOWNLOAD_MODES,
    PUBLISHED_MD5,
    URL_SCHEMES,
    ensure_archives,
    file_md5,
    unsafe_member,
)

PROTOCOLS = ("alphabet", "standard")
MODELS = ("conv4", "conv4-nopool", "mlp")
SPLITS = ("train", "val", "test")
SMALL_ARCHIVES = ("images_background_small1.zip", "images_background_small2.zip")
FULL_ARCHIVES = ("images_background.zip", "images_evaluation.zip")
DATA_ENV, CACHE_ENV = "HARNESS_DATA", "HARNESS_CACHE"
FILTERS = 64  # conv4: 64 filters in every layer (MAML section 5.2, ProtoNets section 3.2)
MLP_WIDTHS = (256, 128, 64, 64)  # MAML section 5.2's fully connected Omniglot network (after Santoro et al.)
FORMAT = 1  # bump when decoding changes, so old cache files are not reused
BATCH_NORM = ("batch statistics only (track_running_stats=False): every forward pass normalises with the "
              "statistics of its own batch, at meta-train and meta-test (transductive, as MAML's code)")

Character = tuple[str, str]  # (alphabet, character folder)


@dataclass(frozen=True)
class OmniglotConfig:
    """Episode sizes, data and model. `query` is query images per class.

    `protocol` "alphabet" or "standard" (module docstring). `archives` None means the protocol's: the
    two small background sets, or images_background.zip and images_evaluation.zip. `rotations` adds
    the rotations by 90/180/270 degrees of every meta-training character as new classes (the papers'
    augmentation, train split only); None means on for "standard", off for "alphabet".
    `train_characters` / `val_characters` size the "standard" split: the first `train_characters`
    characters are for meta-training, the last `val_characters` of them validate, the rest test.
    `data_root` is the folder holding `archives` (None: `$HARNESS_DATA/omniglot`, else `$HARNESS_DATA`);
    `cache_dir` None means `$HARNESS_CACHE/omniglot`, else `~/.cache/metaharness/omniglot`.
    `download` "missing" fetches an absent official archive from `base_url` (None: `$HARNESS_OMNIGLOT_URL`,
    else the authors' repository), "replace" also fetches over one whose md5 is wrong, "never" does not
    go online; `verify_md5` checks official archives against their published md5 (false only for your
    own archives under the official names). `sampler` "native" draws episodes with this module's
    vectorised sampler, "learn2learn" with learn2learn's TaskDataset (`l2l_sampler`): the same task
    distribution, other episodes.
    """

    ways: int = 5
    shots: int = 1
    query: int = 15
    image_size: int = 28
    protocol: str = "alphabet"
    archives: tuple[str, ...] | None = None
    data_root: str | None = None
    cache_dir: str | None = None
    rotations: bool | None = None
    model: str = "conv4"
    train_characters: int = 1200
    val_characters: int = 100
    download: str = "missing"
    base_url: str | None = None
    verify_md5: bool = True
    sampler: str = "native"

    def __post_init__(self) -> None:
        check_sampler(self.sampler)
        for name in ("ways", "shots", "query", "image_size", "train_characters", "val_characters"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 8 <= self.image_size <= 512:
            raise ValueError(f"image_size must be from 8 to 512 pixels, got {self.image_size}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        # Four 2x2 max-pools shrink the image 16-fold; below 16 pixels nothing would be left.
        if self.model == "conv4" and self.image_size < 16:
            raise ValueError(f"model 'conv4' needs image_size >= 16 (four 2x2 max-pools), got "
                             f"{self.image_size}; use model 'conv4-nopool' for smaller images")
        if self.val_characters >= self.train_characters:
            raise ValueError(f"val_characters ({self.val_characters}) must be fewer than train_characters "
                             f"({self.train_characters}): validation characters are held out of those")
        if self.protocol == "alphabet" and (self.train_characters, self.val_characters) != (1200, 100):
            raise ValueError("train_characters and val_characters size the 'standard' protocol's split; "
                             "protocol 'alphabet' splits by alphabet (set protocol = 'standard' or leave "
                             "them out)")
        if self.download not in DOWNLOAD_MODES:
            raise ValueError(f"download must be one of {', '.join(DOWNLOAD_MODES)}, got {self.download!r}")
        if self.base_url is not None and self.base_url.split("://", 1)[0] not in URL_SCHEMES:
            raise ValueError(f"base_url must be an {'/'.join(URL_SCHEMES)} URL of the folder holding the "
                             f"archives, got {self.base_url!r}")
        # Protocol defaults are written into the frozen config, so the record holds what was used.
        if self.archives is None:
            archives = FULL_ARCHIVES if self.protocol == "standard" else SMALL_ARCHIVES
            object.__setattr__(self, "archives", archives)
        if self.rotations is None:
            object.__setattr__(self, "rotations", self.protocol == "standard")
        if not self.archives or not all(isinstance(a, str) and a for a in self.archives):
            raise ValueError(f"archives must be a non-empty list of zip file names, got {self.archives!r}")
        for name in self.archives:
            if unsafe_member(name) or "/" in name:
                raise ValueError(f"archives must be file names inside the data folder, got {name!r}")


@dataclass(frozen=True)
class OmniglotData:
    """Decoded characters: `images[i]` holds every drawing of `characters[i]` = (alphabet, folder)."""

    images: torch.Tensor  # uint8 [characters, drawings, H, W], 255 = ink
    characters: tuple[tuple[str, str], ...]
    archives: tuple[tuple[str, str], ...]  # (path, sha256) in the order given
    cache_file: Path
    from_cache: bool


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(archive_hashes: Sequence[str], image_size: int) -> str:
    """The cache file's key: the archives' contents, the image size, the decoder and its version."""
    import PIL

    blob = "|".join([*archive_hashes, str(image_size), f"format={FORMAT}", f"pillow={PIL.__version__}"])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _decode(data: bytes, image_size: int) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        # LANCZOS to 28x28 as in the MAML authors' resize script; inverted so strokes are bright, as
        # their data loader does (1 - image), which keeps the mostly blank background at zero.
        small = image.convert("L").resize((image_size, image_size), Image.Resampling.LANCZOS)
    pixels = torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8).view(image_size, image_size)
    return 255 - pixels


def _fingerprint(infos: list[zipfile.ZipInfo]) -> list[tuple[str, int]]:
    return [(info.filename.rsplit("/", 1)[-1], info.CRC) for info in infos]


def _members(archive: zipfile.ZipFile, path: Path) -> dict[Character, list[zipfile.ZipInfo]]:
    """The drawings of each character of an open archive, sorted by name; a member whose name would
    leave the folder is an error (the suite never extracts, but such an archive is not the authors')."""
    members: dict[Character, list[zipfile.ZipInfo]] = {}
    for info in archive.infolist():
        why = unsafe_member(info.filename)
        if why:
            raise HarnessError(f"archive {path} holds a member whose path {why}: {info.filename!r}; "
                               "refusing it")
        parts = info.filename.split("/")  # <archive name>/<Alphabet>/characterNN/<id>_<drawer>.png
        if len(parts) == 4 and parts[3].lower().endswith(".png"):
            members.setdefault((parts[1], parts[2]), []).append(info)
    for infos in members.values():
        infos.sort(key=lambda info: info.filename)
    return members


def _open(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise HarnessError(f"Omniglot archive {path} is not a readable zip file: {exc}") from None


def _decode_archives(paths: Sequence[Path], image_size: int) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """Decode every drawing of every character, de-duplicating characters found in several archives."""
    found: dict[tuple[str, str], tuple[Path, list[zipfile.ZipInfo]]] = {}
    for path in paths:
        with _open(path) as archive:
            members = _members(archive, path)
        for key, infos in members.items():
            if key not in found:
                found[key] = (path, infos)
                continue
            # Greek and Latin stand in both small sets: the same drawings, byte for byte (CRC).
            first_path, first = found[key]
            if _fingerprint(first) != _fingerprint(infos):
                raise HarnessError(f"Omniglot character {'/'.join(key)} differs between {first_path} and "
                                   f"{path}; archives may only share identical characters")
    if not found:
        raise HarnessError(f"no <alphabet>/<character>/<drawing>.png images in {', '.join(map(str, paths))}")
    characters = sorted(found)
    counts = {len(found[key][1]) for key in characters}
    if len(counts) != 1:
        uneven = [f"{'/'.join(k)}: {len(found[k][1])}" for k in characters if len(found[k][1]) != max(counts)]
        raise HarnessError(f"every Omniglot character must have the same number of drawings; {uneven[:5]}")
    images = torch.empty(len(characters), counts.pop(), image_size, image_size, dtype=torch.uint8)
    for path in paths:
        with _open(path) as archive:
            for c, key in enumerate(characters):
                owner, infos = found[key]
                if owner != path:  # a character is decoded from the first archive that holds it
                    continue
                for d, info in enumerate(infos):
                    try:
                        images[c, d] = _decode(archive.read(info), image_size)
                    except Exception as exc:  # PIL raises several types for a damaged file
                        raise HarnessError(f"cannot decode image {info.filename} in archive {path}: "
                                           f"{type(exc).__name__}: {exc}") from exc
    return images, characters


def load_characters(paths: Sequence[Path], image_size: int, cache_dir: Path) -> OmniglotData:
    """Decoded characters of the archives at `paths`, from the cache file when one matches."""
    hashes = [file_sha256(path) for path in paths]
    key = cache_key(hashes, image_size)
    cache_file = cache_dir / f"omniglot-{image_size}px-{key}.pt"
    archives = tuple((str(p), h) for p, h in zip(paths, hashes))
    if cache_file.is_file():
        try:
            blob = torch.load(cache_file, weights_only=True)
            current = blob["format"] == FORMAT and blob["archives"] == list(hashes)
            if current and blob["images"].shape[-1] == image_size:
                characters = tuple(zip(blob["alphabets"], blob["folders"]))
                return OmniglotData(blob["images"], characters, archives, cache_file, from_cache=True)
        except Exception:  # an unreadable cache file is only a missed shortcut: decode again
            pass
    images, characters = _decode_archives(paths, image_size)
    blob = {"format": FORMAT, "archives": list(hashes), "images": images,
            "alphabets": [a for a, _ in characters], "folders": [f for _, f in characters]}
    try:
        save_atomic(blob, cache_file)
    except OSError as exc:
        raise UsageError(f"cannot write the Omniglot cache file {cache_file}: {exc}; set the suite option "
                         f"cache_dir or ${CACHE_ENV} to a writable directory") from exc
    return OmniglotData(images, tuple(characters), archives, cache_file, from_cache=False)


def alphabet_splits(alphabets: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Alphabets of each split: a pure function of the set of alphabet names.

    In sorted order, position i goes to val when i % 8 == 5, to test when i % 8 is 2 or 6, else to
    train: 5 / 1 / 2 alphabets of every 8. On the two small background sets this gives train =
    Balinese, Early_Aramaic, Japanese_(katakana), Korean, Tagalog (150 characters), val = Latin (26),
    test = Greek, Sanskrit (66): every split has at least 20 characters (20-way episodes), and the two
    alphabets both small sets share stay out of meta-training.
    """
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    for i, name in enumerate(sorted(set(alphabets))):
        splits["val" if i % 8 == 5 else "test" if i % 8 in (2, 6) else "train"].append(name)
    return {split: tuple(names) for split, names in splits.items()}


def standard_splits(ranks: Mapping[Character, int], train_characters: int = 1200,
                    val_characters: int = 100) -> dict[str, tuple[Character, ...]]:
    """Characters of each split of the "standard" protocol: a pure function of the characters and the
    rank of the archive each comes from (0 for images_background.zip, 1 for images_evaluation.zip).

    The order is archive, then (alphabet, character) sorted: the 964 background characters, then the
    659 evaluation ones. The first `train_characters - val_characters` meta-train, the next
    `val_characters` validate and the rest test: on the full archives 1100 / 100 / 423, the sizes of
    MAML's code (which holds out 100 of the 1200 training characters; Vinyals et al. 2016 and Santoro
    et al. 2016 give 1200 / 423). Their code draws the 1200 at random from a file listing whose order
    depends on the file system (MAML: random.seed(1) over os.listdir); a fixed order makes the split
    the same everywhere. On the full archives, meta-training gets the 964 background characters and the
    first 136 evaluation ones, validation the next 100 evaluation characters, and the test split the
    last 423, all from alphabets the dataset's authors set apart for evaluation.
    """
    order = sorted(ranks, key=lambda key: (ranks[key], key))
    if train_characters >= len(order):
        raise UsageError(f"train_characters = {train_characters} leaves no test characters: the archives "
                         f"hold {len(order)} characters (1623 in images_background.zip and "
                         "images_evaluation.zip)")
    cut = train_characters - val_characters
    return {"train": tuple(order[:cut]), "val": tuple(order[cut:train_characters]),
            "test": tuple(order[train_characters:])}


_survey_memo: dict[tuple[tuple[str, int, int], ...], dict[Character, tuple[int, int]]] = {}


def survey_archives(paths: Sequence[Path]) -> dict[Character, tuple[int, int]]:
    """{character: (rank of the first archive holding it, its number of drawings)} from the archives'
    listings alone (no decoding: cheap enough for the grid's check, and remembered per file version)."""
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    if key not in _survey_memo:
        found: dict[Character, tuple[int, int]] = {}
        for rank, path in enumerate(paths):
            with _open(path) as archive:
                for character, infos in _members(archive, path).items():
                    found.setdefault(character, (rank, len(infos)))
        if not found:
            listed = ", ".join(map(str, paths))
            raise HarnessError(f"no <alphabet>/<character>/<drawing>.png images in {listed}")
        _survey_memo[key] = found
    return _survey_memo[key]


def split_characters(
    cfg: OmniglotConfig, survey: Mapping[Character, tuple[int, int]]
) -> dict[str, tuple[Character, ...]]:
    """The characters of each split under `cfg.protocol`, each split sorted."""
    if cfg.protocol == "standard":
        ranks = {character: rank for character, (rank, _) in survey.items()}
        return {split: tuple(sorted(chars)) for split, chars in
                standard_splits(ranks, cfg.train_characters, cfg.val_characters).items()}
    names = alphabet_splits([alphabet for alphabet, _ in survey])
    return {split: tuple(sorted(c for c in survey if c[0] in names[split])) for split in SPLITS}


def episode_problem(cfg: OmniglotConfig, splits: Mapping[str, Sequence[Character]], drawings: int) -> str:
    """'' when every split can give `cfg`'s episodes, else why not (what was asked and what there is)."""
    if cfg.shots + cfg.query > drawings:
        return (f"shots + query = {cfg.shots} + {cfg.query} = {cfg.shots + cfg.query} images per class, but "
                f"each Omniglot character has {drawings} drawings")
    for split in SPLITS:
        chars = splits[split]
        classes = len(chars) * (4 if cfg.rotations and split == "train" else 1)
        if classes < cfg.ways:
            if cfg.protocol == "alphabet":
                where = f"alphabets: {', '.join(sorted({a for a, _ in chars})) or 'none'}"
            else:
                where = f"{len(chars)} characters" + (", each in 4 rotations" if classes > len(chars) else "")
            return (f"{cfg.ways}-way episodes need {cfg.ways} classes, but the {split} split ({where}) has "
                    f"{classes}")
    return ""


def _resolve_dir(value: str | None, env: str) -> Path | None:
    """The option's value, else `$env/omniglot`, else None."""
    if value is not None:
        return Path(value).expanduser()
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser() / "omniglot"
    return None


def find_data_root(cfg: OmniglotConfig) -> Path:
    """The folder holding every archive of `cfg`, or a UsageError naming the files and folders tried.

    Official archives (images_background.zip, images_evaluation.zip) absent there are downloaded first
    as `cfg.download` allows, and those present must match their published md5 (`cfg.verify_md5`).
    """
    root = _resolve_dir(cfg.data_root, DATA_ENV)
    if root is None:
        raise UsageError(f"no Omniglot data directory: set the suite option data_root or ${DATA_ENV} "
                         f"(its omniglot/ subfolder, or itself, must hold {', '.join(cfg.archives)})")
    # $HARNESS_DATA may name the shared data root (with omniglot/ inside) or the folder itself.
    candidates = [root] if cfg.data_root is not None else [root, root.parent]
    holds = [sum((c / a).is_file() for a in cfg.archives) for c in candidates]
    # Downloads go beside the archives already there, else into the first candidate.
    folder = candidates[holds.index(max(holds))] if max(holds) else candidates[0]
    ensure_archives(folder, cfg.archives, mode=cfg.download, base_url=cfg.base_url, verify_md5=cfg.verify_md5)
    missing = [a for a in cfg.archives if not (folder / a).is_file()]
    if missing:
        where = " or ".join(map(str, candidates)) if not max(holds) else str(folder)
        off = [a for a in missing if a in PUBLISHED_MD5]
        hint = (f"; downloads are off (download = 'never'): set download = 'missing' to fetch "
                f"{', '.join(off)}" if off else "")
        raise UsageError(f"Omniglot archives {', '.join(missing)} not found in {where}; expected "
                         f"{', '.join(cfg.archives)} there (brendenlake/omniglot, folder python/){hint}")
    return folder


def check_data(cfg: OmniglotConfig) -> str:
    """'' when `cfg` can run here, else why not. The grid calls this before running anything, so the
    download (when one is needed) happens here, and so do the checks of the sizes against the data."""
    if cfg.sampler == "learn2learn" and missing_learn2learn():
        return missing_learn2learn()
    try:
        paths = [find_data_root(cfg) / a for a in cfg.archives]
        survey = survey_archives(paths)
        return episode_problem(cfg, split_characters(cfg, survey), min(n for _, n in survey.values()))
    except HarnessError as exc:
        return str(exc)


class OmniglotSuite(TaskSuite):
    """N-way K-shot episodes from real Omniglot characters, scored by query accuracy."""

    kind = "classification"
    metric_name = "accuracy"
    higher_is_better = True

    def __init__(self, config: OmniglotConfig | None = None) -> None:
        super().__init__(config if config is not None else OmniglotConfig())
        cfg = self.config
        root = find_data_root(cfg)
        paths = [root / a for a in cfg.archives]
        # Sizes are checked against the archives' listings before the (slow, first time) decoding.
        survey = survey_archives(paths)
        self.characters = split_characters(cfg, survey)
        self.alphabets = {split: tuple(sorted({a for a, _ in chars})) for split, chars in
                          self.characters.items()}
        problem = episode_problem(cfg, self.characters, min(n for _, n in survey.values()))
        if problem:
            raise UsageError(problem)
        cache_dir = _resolve_dir(cfg.cache_dir, CACHE_ENV) or Path.home() / ".cache/metaharness/omniglot"
        self.data = load_characters(paths, cfg.image_size, cache_dir)
        # A class is (character, quarter turns); rotated copies are classes of the train split only.
        index = {character: i for i, character in enumerate(self.data.characters)}
        self.classes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for split, names in self.characters.items():
            chars = torch.tensor(sorted(index[c] for c in names), dtype=torch.int64)
            turns = 4 if cfg.rotations and split == "train" else 1
            self.classes[split] = (chars.repeat(turns), torch.arange(turns).repeat_interleave(len(chars)))
        self._l2l: TaskDatasetSampler | None = None
        if cfg.sampler == "learn2learn":
            self._l2l = TaskDatasetSampler.from_characters(self.data.images, self.classes, cfg.ways, cfg.shots,
                                                           cfg.query)

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        """`n_tasks` episodes: support_x [n, ways*shots, 1, H, W] float32 in [0, 1] (ink = 1), labels
        int64 in 0..ways-1, class-major (all shots of label 0 first); query_x likewise with `query`."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        if not isinstance(n_tasks, int) or isinstance(n_tasks, bool) or n_tasks < 1:
            raise ValueError(f"n_tasks must be a positive integer, got {n_tasks!r}")
        if self._l2l is not None:
            return self._l2l.sample(n_tasks, generator, split)
        cfg, images = self.config, self.data.images
        chars, turns = self.classes[split]
        per_class, size = cfg.shots + cfg.query, cfg.image_size
        # Sorting uniform keys gives a uniform random permutation per row: its first `ways` entries are
        # distinct classes in random order, so label = position is already a random relabelling.
        # float64 keys and a stable sort make ties (hence platform-dependent orders) practically impossible.
        keys = torch.rand(n_tasks, len(chars), generator=generator, dtype=torch.float64)
        picked = keys.argsort(dim=1, stable=True)[:, : cfg.ways]
        keys = torch.rand(n_tasks, cfg.ways, images.shape[1], generator=generator, dtype=torch.float64)
        drawings = keys.argsort(dim=2, stable=True)[..., :per_class]
        x = images[chars[picked].unsqueeze(-1), drawings]  # uint8 [n, ways, shots+query, H, W]
        quarter_turns = turns[picked]
        for k in (1, 2, 3):
            mask = quarter_turns == k
            if bool(mask.any()):
                x[mask] = torch.rot90(x[mask], k, dims=(-2, -1))
        # Split while still uint8 (the copies are 1 byte a pixel), then convert each part once to float.
        support = x[:, :, : cfg.shots].reshape(n_tasks, cfg.ways * cfg.shots, 1, size, size)
        query = x[:, :, cfg.shots :].reshape(n_tasks, cfg.ways * cfg.query, 1, size, size)
        labels = torch.arange(cfg.ways)
        return TaskBatch(
            support_x=support.to(torch.float32).div_(255.0),
            support_y=labels.repeat_interleave(cfg.shots).expand(n_tasks, -1).clone(),
            query_x=query.to(torch.float32).div_(255.0),
            query_y=labels.repeat_interleave(cfg.query).expand(n_tasks, -1).clone(),
        )

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
        return conv4(1, FILTERS, cfg.ways, cfg.image_size, pool=cfg.model == "conv4")

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the logits, the papers' classification loss."""
        return F.cross_entropy(prediction, target)

    def metric(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Fraction of query images whose highest logit is the true label."""
        return (prediction.argmax(dim=-1) == target).to(torch.float32).mean()

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
            architecture = f"4 x [3x3 conv {FILTERS}, batch norm, ReLU, {down}], linear to {cfg.ways}"
        import PIL

        return {
            "protocol": cfg.protocol,
            "archives": archives,
            "splits": splits,
            "rotations": bool(cfg.rotations),
            "cache_file": str(self.data.cache_file),
            "pillow": PIL.__version__,
            "model": {"name": cfg.model, "architecture": architecture, "batch_norm": BATCH_NORM},
            "sampler": self._l2l.describe() if self._l2l is not None else {"name": "native"},
        }


@hookimpl
def harness_register_task_suites() -> list[TaskSuiteSpec]:
    return [
        TaskSuiteSpec(
            name="omniglot",
            factory=OmniglotSuite,
            config=OmniglotConfig,
            task_kind="classification",
            description="N-way K-shot Omniglot character classification (alphabet-disjoint splits of the "
                        "small sets, or the papers' 1200/423 split of the full archives); accuracy",
            paper=(
                "Lake, Salakhutdinov & Tenenbaum 2015 (data); Finn et al. 2017 / Snell et al. 2017 (protocol)"
            ),
            requires=("PIL",),
            check=check_data,
            # Model and data location/download policy do not change the episodes (same archives, same
            # sampling): leaving them out of the episode seed pairs conv4 and conv4-nopool cells.
            episode_neutral=("model", "data_root", "cache_dir", "download", "base_url", "verify_md5"),
        )
    ]
