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
# The test split, held out from training and from every choice a search or ASHA makes: scikit-image's grayscale
# photographs (the cameraman, coins, the moon) and textures (brick, grass, gravel), stored as RGB. Textures are
# where a GAN teacher's hallucinated detail shows, and none of them is a crop of a training or validation photo.
HELD_OUT_PHOTOS = ("brick.png", "camera.png", "coins.png", "grass.png", "gravel.png", "moon.png")


def sample_photo_paths(names: tuple[str, ...] = SAMPLE_PHOTOS) -> list[Path]:
    """Paths of the bundled photos (`names`) inside the installed scikit-image package."""
    root = Path(str(files("skimage.data")))
    paths = [root / name for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise SdakdError(
            f"scikit-image at {root} lacks the bundled photos {', '.join(missing)}; "
            "reinstall scikit-image or pass images_dir"
        )
    return paths
