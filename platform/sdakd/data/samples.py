"""The natural colour photographs shipped inside the scikit-image wheel: a small real dataset with no download."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from sdakd.errors import SdakdError

# RGB photographs only: scikit-image's grayscale images, the synthetic ones (color, phantom, chessboard) and the
# RGBA graphics (logo, horse) would teach a super-resolution model little. Anything not listed is fetched by pooch
# on demand, which must never happen here.
# The last two become the validation split: ordinary photographs (a cat, a cup), not the mostly black
# retina or deep-field images, and not one of the motorcycle stereo pair whose twin sits in training.
SAMPLE_PHOTOS = (
    "astronaut.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
    "chelsea.png",
    "coffee.png",
)


def sample_photo_paths() -> list[Path]:
    """Paths of the bundled photos inside the installed scikit-image package."""
    root = Path(str(files("skimage.data")))
    paths = [root / name for name in SAMPLE_PHOTOS]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise SdakdError(
            f"scikit-image at {root} lacks the bundled photos {', '.join(missing)}; "
            "reinstall scikit-image or pass images_dir"
        )
    return paths
