"""The 18 CloSe classes: names, display names, palette and garment vectors.

The order is the one of CloSe-D and of the published CloSe-Net weights; every
array of labels, logits or garment flags in this project uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "Hat", "Body", "Shirt", "TShirt", "Vest", "Coat", "Dress", "Skirt", "Pants",
    "ShortPants", "Shoes", "Hoodies", "Hair", "Swimwear", "Underwear", "Scarf",
    "Jumpsuits", "Jacket",
)
N_CLASSES = len(CLASS_NAMES)

DISPLAY_NAMES: tuple[str, ...] = (
    "Hat", "Body", "Shirt", "T-shirt", "Vest", "Coat", "Dress", "Skirt", "Pants",
    "Shorts", "Shoes", "Hoodie", "Hair", "Swimwear", "Underwear", "Scarf",
    "Jumpsuit", "Jacket",
)

# Distinct, colour-blind-aware-ish sRGB colours (0-255), one per class.
PALETTE: np.ndarray = np.array(
    [
        (230, 25, 75),    # Hat
        (255, 206, 160),  # Body
        (60, 180, 75),    # Shirt
        (0, 130, 200),    # TShirt
        (245, 130, 48),   # Vest
        (145, 30, 180),   # Coat
        (240, 50, 230),   # Dress
        (210, 245, 60),   # Skirt
        (0, 0, 128),      # Pants
        (70, 240, 240),   # ShortPants
        (128, 128, 0),    # Shoes
        (170, 255, 195),  # Hoodies (mint: never the neutral grey of unlabelled vertices)
        (100, 60, 20),    # Hair
        (0, 128, 128),    # Swimwear
        (250, 190, 212),  # Underwear
        (255, 225, 25),   # Scarf
        (170, 110, 195),  # Jumpsuits
        (128, 0, 0),      # Jacket
    ],
    dtype=np.uint8,
)
PALETTE.setflags(write=False)

# sRGB colour (0-1) the label colour layer shows on unlabelled vertices (label -1).
# It is neutral grey, and no class colour is: painting it back never means a class.
UNLABELLED_COLOR: tuple[float, float, float] = (0.5, 0.5, 0.5)

GROUP_PREFIX = "CloSe_"

_ALIASES = {
    "tshirt": "TShirt", "t-shirt": "TShirt", "tee": "TShirt",
    "shorts": "ShortPants", "shortpants": "ShortPants",
    "hoodie": "Hoodies", "hoodies": "Hoodies",
    "jumpsuit": "Jumpsuits", "jumpsuits": "Jumpsuits",
    "trousers": "Pants", "skin": "Body",
}
_LOOKUP = {name.lower(): i for i, name in enumerate(CLASS_NAMES)}
_LOOKUP.update({d.lower(): i for i, d in enumerate(DISPLAY_NAMES)})
_LOOKUP.update({alias: CLASS_NAMES.index(name) for alias, name in _ALIASES.items()})


def class_index(name: str) -> int:
    """Index of a class given its CloSe name, display name or a common alias."""
    try:
        return _LOOKUP[name.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown class {name!r}; known classes: {', '.join(CLASS_NAMES)}"
        ) from None


def group_name(index: int) -> str:
    """Vertex-group name of a class, e.g. ``CloSe_TShirt``."""
    return GROUP_PREFIX + CLASS_NAMES[index]


def class_from_group(name: str) -> int | None:
    """Class index of a ``CloSe_<Class>`` vertex-group name, else None."""
    if not name.startswith(GROUP_PREFIX):
        return None
    try:
        return CLASS_NAMES.index(name[len(GROUP_PREFIX):])
    except ValueError:
        return None


def garments_from_names(names: Iterable[str] | str) -> np.ndarray:
    """(18,) int32 0/1 vector from class names (a list or a comma-separated string)."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    garments = np.zeros(N_CLASSES, dtype=np.int32)
    for name in names:
        garments[class_index(name)] = 1
    return garments


def garments_from_labels(labels: np.ndarray) -> np.ndarray:
    """(18,) int32 0/1 vector of the classes present in a label array."""
    garments = np.zeros(N_CLASSES, dtype=np.int32)
    present = np.unique(np.asarray(labels))
    garments[present[(present >= 0) & (present < N_CLASSES)]] = 1
    return garments


def names_of(garments: Sequence[int] | np.ndarray) -> list[str]:
    """Class names flagged 1 in a garments vector."""
    return [CLASS_NAMES[i] for i in np.flatnonzero(np.asarray(garments))]


def label_colors(labels: np.ndarray, alpha: bool = False) -> np.ndarray:
    """Per-point palette colours as float32 in [0, 1], shape (N, 3) or (N, 4)."""
    colors = PALETTE[np.asarray(labels)].astype(np.float32) / 255.0
    if alpha:
        colors = np.concatenate([colors, np.ones((len(colors), 1), np.float32)], axis=1)
    return colors

