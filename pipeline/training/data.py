"""Training data: labelled areas read with the inference reader, chips sampled on the fly.

Pixels go through exactly the code inference uses (``pipeline.scene`` to read, ``pipeline.normalize``
to scale and to build the valid mask), so a model never sees inputs scaled differently in training
and in production. A labelled area (a window of a scene triple, or one CAU-Flood tile) is read and
normalised once into memory; chips are cut from it at random positions per step (no chip files).

Grids are checked as ``detect`` checks them (``pipeline.io.grid.align_pair``: SAR on another grid is
warped onto the optical grid, a pair that cannot be aligned is refused), and labels are placed on
the optical grid by ``pipeline.training.labels`` (nearest, or refused). The label encoding is decided
once per label file (scene sources) or per split (folders, chips), never per window or chip (rule in
``pipeline.training.labels``); the inputs' invalid pixels (``valid_mask``) become ignore as well.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.config import DetectConfig
from pipeline.errors import ConfigError, InputError, NoCRSWarning
from pipeline.geometry import PixelBox
from pipeline.io.bands import resolve_bands
from pipeline.io.grid import align_pair
from pipeline.io.normalize import normalize_optical, normalize_sar, valid_mask
from pipeline.io.scene import open_scene
from pipeline.training.config import Area, ChipSource, DataConfig, FolderSource, SceneSource
from pipeline.training.labels import (
    IGNORE,
    Encoding,
    LabelReader,
    decode_label,
    file_values,
    label_encoding,
    split_encoding,
)

__all__ = ["IGNORE", "LabelledArea", "decode_label", "label_encoding", "load_areas", "read_pair"]

LabelEncoding = Literal["auto", "0/1", "0/255"]

# CAU-Flood layouts: (optical dir, SAR dir, label dir)
FOLDER_LAYOUTS: tuple[tuple[str, str, str], ...] = (("A", "B", "label"), ("opt", "vv", "flood_vv"))
_IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"}


@dataclass
class LabelledArea:
    """Normalised inputs and a 0/1/255 label of one area, all on the same pixel grid."""

    optical: np.ndarray  # C×H×W float32
    sar: np.ndarray  # C×H×W float32
    label: np.ndarray  # H×W uint8: 0 unchanged, 1 changed, 255 ignore
    name: str = ""

    def __post_init__(self) -> None:
        self.optical = np.asarray(self.optical, dtype=np.float32)
        self.sar = np.asarray(self.sar, dtype=np.float32)
        h, w = self.label.shape
        if self.optical.shape[1:] != (h, w) or self.sar.shape[1:] != (h, w):
            raise InputError(
                self.name or "area",
                f"optical {self.optical.shape}, SAR {self.sar.shape} and label {self.label.shape} "
                "are not on the same grid",
            )

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the area, from its label."""
        return self.label.shape  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# reading with the inference reader


def _window(window: tuple[int, int, int, int]):

    r0, r1, c0, c1 = window
    return PixelBox(r0, r1, c0, c1)


def area_window(area: Area, optical_uri: str, cfg: DetectConfig) -> tuple[int, int, int, int]:
    """Pixel window of an area, clipped to the scene; bounds go through the optical transform."""

    scene = open_scene(optical_uri, "optical", cfg)
    h, w = scene.shape
    if area.window is not None:
        r0, r1, c0, c1 = area.window
    else:
        if scene.crs is None:
            raise InputError(
                optical_uri, "bounds need a georeferenced optical scene; give a window"
            )
        left, bottom, right, top = area.bounds  # type: ignore[misc]
        inv = ~scene.transform
        cols, rows = zip(*(inv @ (x, y) for x, y in ((left, top), (right, bottom))), strict=True)
        r0, r1 = int(np.floor(min(rows))), int(np.ceil(max(rows)))
        c0, c1 = int(np.floor(min(cols))), int(np.ceil(max(cols)))
    r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
    if r0 >= r1 or c0 >= c1:
        raise InputError(
            optical_uri, f"area {area.window or area.bounds} is outside the {h}×{w} scene"
        )
    return r0, r1, c0, c1


Channels = tuple[int, int]  # (optical_channels, sar_channels) of the model being trained


def read_pair(
    optical_uri: str,
    sar_uri: str,
    cfg: DetectConfig,
    window: tuple[int, int, int, int] | None,
    channels: Channels | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    """Normalised optical, normalised SAR, the valid mask of one window, and the optical grid, as
    inference reads them: the same grid check and SAR warp as ``detect`` (``align_pair``).

    ``channels``: the model's channel counts; the bands are then chosen as the engine chooses them
    (``pipeline.bands.resolve_bands``), so a model trains and detects on the same bands.
    """

    opt_scene = open_scene(optical_uri, "optical", cfg)
    sar_scene = open_scene(sar_uri, "sar", cfg)
    if channels is not None:
        resolved = resolve_bands(
            cfg, (optical_uri, opt_scene.count), (sar_uri, sar_scene.count), *channels
        )
        if resolved is not cfg:
            cfg = resolved
            opt_scene = open_scene(optical_uri, "optical", cfg)
            sar_scene = open_scene(sar_uri, "sar", cfg)
    pair = align_pair(opt_scene, sar_scene, cfg)
    win = _window(window or (0, opt_scene.shape[0], 0, opt_scene.shape[1]))
    opt_raw = pair.optical.read_window(win)
    sar_raw = pair.sar.read_window(win)
    valid = valid_mask(opt_raw, sar_raw, pair.optical.nodata, pair.sar.nodata)
    opt = normalize_optical(opt_raw, cfg.optical, pair.optical.dtype, valid)
    sar = normalize_sar(sar_raw, cfg.sar, pair.sar.units, pair.sar.dtype, valid)
    return opt, sar, np.asarray(valid, bool), pair.grid


def read_label(
    uri: str, grid: Any, window: tuple[int, int, int, int] | None, encoding: Encoding
) -> np.ndarray:
    """A label window on the image grid, decoded (0/1/255); outside its footprint is ignore."""
    reader = LabelReader(uri, grid)
    raw, outside = reader.read(window)
    label = decode_label(raw, encoding, reader.nodata)
    label[outside] = IGNORE
    return label


def assemble(opt, sar, valid, label, name: str) -> LabelledArea:
    """Mark invalid pixels IGNORE in the label, so the loss and metrics skip what either input
    lacks."""
    label = label.copy()
    label[~valid] = IGNORE
    return LabelledArea(
        np.ascontiguousarray(opt, np.float32), np.ascontiguousarray(sar, np.float32), label, name
    )


def load_scene_areas(
    src: SceneSource,
    cfg: DetectConfig,
    split: Literal["train", "val"],
    encoding: LabelEncoding = "auto",
    channels: Channels | None = None,
) -> list[LabelledArea]:
    """Read every train or val area of a scene triple into memory."""
    areas = src.train if split == "train" else src.val
    windows = [area_window(a, src.optical, cfg) for a in areas]
    enc = label_encoding(file_values(src.label)[0], src.label) if encoding == "auto" else encoding
    out = []
    for w in windows:
        opt, sar, valid, grid = read_pair(src.optical, src.sar, cfg, w, channels)
        label = read_label(src.label, grid, w, enc)
        out.append(assemble(opt, sar, valid, label, f"{src.label}[{w[0]}:{w[1]},{w[2]}:{w[3]}]"))
    return out


# ---------------------------------------------------------------------------------------------
# CAU-Flood folders


def folder_triples(root: str | Path, split: str) -> list[tuple[Path, Path, Path]]:
    """(optical, SAR, label) file triples of one split, matched by file stem, sorted by name."""
    base = Path(root) / split
    if not base.is_dir():
        raise InputError(str(base), "split folder not found")
    for a_dir, b_dir, l_dir in FOLDER_LAYOUTS:
        dirs = [base / a_dir, base / b_dir, base / l_dir]
        if all(d.is_dir() for d in dirs):
            break
    else:
        layouts = ", ".join("/".join(lay) for lay in FOLDER_LAYOUTS)
        raise InputError(str(base), f"no CAU-Flood layout found (expected sub-folders {layouts})")
    files = [{p.stem: p for p in d.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES} for d in dirs]
    if not files[0]:
        raise InputError(str(dirs[0]), "no image tiles found")
    triples = []
    for stem in sorted(files[0]):
        missing = [str(d) for d, f in zip(dirs[1:], files[1:], strict=True) if stem not in f]
        if missing:
            raise InputError(str(files[0][stem]), f"no matching tile named {stem!r} in {missing}")
        triples.append((files[0][stem], files[1][stem], files[2][stem]))
    return triples


def load_folder_areas(
    root: str | Path,
    split: str,
    cfg: DetectConfig,
    encoding: LabelEncoding = "auto",
    channels: Channels | None = None,
) -> list[LabelledArea]:
    """Read every tile of one split (each tile is one labelled area)."""
    triples = folder_triples(root, split)
    labels = [str(lab) for _, _, lab in triples]
    enc = split_encoding(labels, str(Path(root) / split)) if encoding == "auto" else encoding
    out = []
    for opt_p, sar_p, lab_p in triples:
        opt, sar, valid, grid = read_pair(str(opt_p), str(sar_p), cfg, None, channels)
        out.append(assemble(opt, sar, valid, read_label(str(lab_p), grid, None, enc), lab_p.stem))
    return out


# ---------------------------------------------------------------------------------------------
# chip folders (OMBRIA and datasets of the same shape)


ChipTriple = tuple[str, Path, Path, Path]  # (id, optical, SAR, label)


def chip_triples(src: ChipSource, split: str) -> list[ChipTriple]:
    """(id, optical, SAR, label) of every chip of ``split``, sorted by id; a missing partner file
    is an error naming it (a silently dropped chip would change the split)."""
    root = Path(src.root)
    pattern = src.optical.format(split=split, id="*")
    prefix, suffix = (s.format(split=split) for s in src.optical.split("{id}", 1))
    found = sorted(root.glob(pattern))
    if not found:
        raise InputError(str(root / pattern), "no chips match this optical template")
    out: list[ChipTriple] = []
    for opt in found:
        rel = opt.relative_to(root).as_posix()
        chip_id = rel[len(prefix) : len(rel) - len(suffix)]
        sar = root / src.sar.format(split=split, id=chip_id)
        lab = root / src.label.format(split=split, id=chip_id)
        for partner in (sar, lab):
            if not partner.is_file():
                raise InputError(str(partner), f"chip {chip_id!r} has no partner file here")
        out.append((chip_id, opt, sar, lab))
    return out


def split_ids(ids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, val) ids: a seeded random ``fraction`` held out, independent of file order."""
    ids = sorted(ids)
    if fraction <= 0:
        return ids, []
    order = np.random.default_rng(seed).permutation(len(ids))
    held = {ids[i] for i in order[: max(1, round(fraction * len(ids)))]}
    return [i for i in ids if i not in held], [i for i in ids if i in held]


def load_chip_triples(
    triples: list[ChipTriple],
    cfg: DetectConfig,
    encoding: LabelEncoding = "auto",
    channels: Channels | None = None,
    source: str = "chips",
) -> list[LabelledArea]:
    """Read chips with the inference reader; the label encoding is decided once for all of them."""
    labels = [str(lab) for _, _, _, lab in triples]
    enc = split_encoding(labels, source) if encoding == "auto" else encoding
    out = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NoCRSWarning)
        for chip_id, opt_p, sar_p, lab_p in triples:
            opt, sar, valid, grid = read_pair(str(opt_p), str(sar_p), cfg, None, channels)
            out.append(assemble(opt, sar, valid, read_label(str(lab_p), grid, None, enc), chip_id))
    plain = [w for w in caught if issubclass(w.category, NoCRSWarning)]
    for w in caught:  # anything else is said as it was
        if w not in plain:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if plain:
        warnings.warn(
            f"{source}: {len(plain)} chip files of {len(triples)} chips have no "
            "CRS/georeferencing; they are read in pixel coordinates",
            NoCRSWarning,
            stacklevel=2,
        )
    return out


def load_chip_split(
    src: ChipSource, split: str, cfg: DetectConfig, channels: Channels | None = None
) -> list[LabelledArea]:
    """Every chip of one split (e.g. OMBRIA ``test``), read as inference reads it."""
    return load_chip_triples(chip_triples(src, split), cfg, channels=channels, source=src.root)


def _chip_splits(src: ChipSource, cfg: DetectConfig, channels: Channels | None):
    triples = chip_triples(src, src.train_split)
    train_ids, val_ids = split_ids([t[0] for t in triples], src.val_fraction, src.val_seed)
    areas = load_chip_triples(triples, cfg, channels=channels, source=src.root)
    by_name = {a.name: a for a in areas}
    return [by_name[i] for i in train_ids], [by_name[i] for i in val_ids]


def load_areas(
    data: DataConfig, cfg: DetectConfig, channels: Channels | None = None
) -> tuple[list[LabelledArea], list[LabelledArea]]:
    """Train and validation areas of a recipe's data section (bands chosen for ``channels``)."""
    if data.chips is not None:
        return _chip_splits(data.chips, cfg, channels)
    if data.folders is not None:
        return _folder_splits(data.folders, cfg, channels)
    train, val = [], []
    for src in data.scenes:
        train += load_scene_areas(src, cfg, "train", channels=channels)
        if src.val:
            val += load_scene_areas(src, cfg, "val", channels=channels)
    return train, val


def _folder_splits(src: FolderSource, cfg: DetectConfig, channels: Channels | None):
    train = load_folder_areas(src.root, src.train_split, cfg, channels=channels)
    if src.val_split is None:
        return train, []
    if not (Path(src.root) / src.val_split).is_dir():
        raise ConfigError(
            f"{Path(src.root) / src.val_split}: validation split not found; the CAU-Flood release "
            "has only train/ and test/: set data.folders.val_split (e.g. test, with the selection "
            "risk that brings) or null"
        )
    return train, load_folder_areas(src.root, src.val_split, cfg, channels=channels)
