"""Omniglot's archives as the authors publish them (brendenlake/omniglot, python/): zip files read in place,
never extracted, every drawing decoded once to uint8 [characters, drawings, H, W] with strokes bright (255 =
ink) and cached, keyed by the archives' sha256 and the image size; the archives' listings surveyed without
decoding (for checks before anything runs); and the folder holding them found, official ones downloaded
when missing (`omniglot_download`); and the splits of the omniglot suite's two protocols. A helper module
shared by the omniglot and omniglot-runs suites (`cfg` below is an `OmniglotConfig`).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import HarnessError, UsageError
from harness.specs import SPLITS
from harness.storage import DATA_ENV, cached, data_folders, file_sha256
from metaharness_plugins.fewshot.omniglot_download import PUBLISHED_MD5, ensure_archives, unsafe_member

if TYPE_CHECKING:  # imported where images are decoded: checks and surveys need no torch
    import torch

SMALL_ARCHIVES = ("images_background_small1.zip", "images_background_small2.zip")
FULL_ARCHIVES = ("images_background.zip", "images_evaluation.zip")
FORMAT = 1  # bump when decoding changes, so old cache files are not reused
Character = tuple[str, str]  # (alphabet, character folder)

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

def split_characters(
    cfg: Any, survey: Mapping[Character, tuple[int, int]]
) -> dict[str, tuple[Character, ...]]:
    """The characters of each split under `cfg.protocol`, each split sorted."""
    if cfg.protocol == "standard":
        ranks = {character: rank for character, (rank, _) in survey.items()}
        return {split: tuple(sorted(chars)) for split, chars in
                standard_splits(ranks, cfg.train_characters, cfg.val_characters).items()}
    names = alphabet_splits([alphabet for alphabet, _ in survey])
    return {split: tuple(sorted(c for c in survey if c[0] in names[split])) for split in SPLITS}

def episode_problem(cfg: Any, splits: Mapping[str, Sequence[Character]], drawings: int) -> str:
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



@dataclass(frozen=True)
class OmniglotData:
    """Decoded characters: `images[i]` holds every drawing of `characters[i]` = (alphabet, folder)."""

    images: torch.Tensor  # uint8 [characters, drawings, H, W], 255 = ink
    characters: tuple[tuple[str, str], ...]
    archives: tuple[tuple[str, str], ...]  # (path, sha256) in the order given
    cache_file: Path
    from_cache: bool


def cache_key(archive_hashes: Sequence[str], image_size: int) -> str:
    """The cache file's key: the archives' contents, the image size, the decoder and its version."""
    import PIL

    blob = "|".join([*archive_hashes, str(image_size), f"format={FORMAT}", f"pillow={PIL.__version__}"])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def decode_png(data: bytes, image_size: int) -> torch.Tensor:
    """uint8 [image_size, image_size] of one Omniglot PNG drawing, resized, with ink = 255."""
    import torch
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
    import torch

    images = torch.empty(len(characters), counts.pop(), image_size, image_size, dtype=torch.uint8)
    for path in paths:
        with _open(path) as archive:
            for c, key in enumerate(characters):
                owner, infos = found[key]
                if owner != path:  # a character is decoded from the first archive that holds it
                    continue
                for d, info in enumerate(infos):
                    try:
                        images[c, d] = decode_png(archive.read(info), image_size)
                    except Exception as exc:  # PIL raises several types for a damaged file
                        raise HarnessError(f"cannot decode image {info.filename} in archive {path}: "
                                           f"{type(exc).__name__}: {exc}") from exc
    return images, characters


def load_characters(paths: Sequence[Path], image_size: int, cache_dir: Path) -> OmniglotData:
    """Decoded characters of the archives at `paths`, from the cache file when one matches."""
    hashes = [file_sha256(path) for path in paths]
    cache_file = cache_dir / f"omniglot-{image_size}px-{cache_key(hashes, image_size)}.pt"

    def decode() -> dict[str, object]:
        images, characters = _decode_archives(paths, image_size)
        return {"format": FORMAT, "archives": list(hashes), "images": images,
                "alphabets": [a for a, _ in characters], "folders": [f for _, f in characters]}

    def current(blob: dict[str, object]) -> bool:
        return (blob["format"] == FORMAT and blob["archives"] == list(hashes)
                and blob["images"].shape[-1] == image_size)

    blob, from_cache = cached(cache_file, decode, valid=current)
    characters = tuple(zip(blob["alphabets"], blob["folders"]))
    archives = tuple((str(p), h) for p, h in zip(paths, hashes))
    return OmniglotData(blob["images"], characters, archives, cache_file, from_cache=from_cache)


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



def find_data_root(archives: Sequence[str], data_root: str | None, download: str = "missing",
                   base_url: str | None = None, verify_md5: bool = True) -> Path:
    """The folder holding every one of `archives`, or a UsageError naming the files and folders tried:
    `data_root`, else `$HARNESS_DATA/omniglot` or `$HARNESS_DATA` (`harness.storage.data_folders`).

    Official archives (images_background.zip, images_evaluation.zip) absent there are downloaded first
    as `download` allows, and those present must match their published md5 (`verify_md5`).
    """
    candidates = data_folders(data_root, "omniglot")
    if not candidates:
        raise UsageError(f"no Omniglot data directory: set the suite option data_root or ${DATA_ENV} "
                         f"(its omniglot/ subfolder, or itself, must hold {', '.join(archives)})")
    holds = [sum((c / a).is_file() for a in archives) for c in candidates]
    # Downloads go beside the archives already there, else into the first candidate.
    folder = candidates[holds.index(max(holds))] if max(holds) else candidates[0]
    ensure_archives(folder, archives, mode=download, base_url=base_url, verify_md5=verify_md5)
    missing = [a for a in archives if not (folder / a).is_file()]
    if missing:
        where = " or ".join(map(str, candidates)) if not max(holds) else str(folder)
        off = [a for a in missing if a in PUBLISHED_MD5]
        hint = (f"; downloads are off (download = 'never'): set download = 'missing' to fetch "
                f"{', '.join(off)}" if off else "")
        raise UsageError(f"Omniglot archives {', '.join(missing)} not found in {where}; expected "
                         f"{', '.join(archives)} there (brendenlake/omniglot, folder python/){hint}")
    return folder
