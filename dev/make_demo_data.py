"""Build the bundled demo set from the shared EXIF-GPS photo collection (developer tool).

Source: drewnoakes/metadata-extractor-images (commit 4beba640487802442bc9931fb01274e908102d3a),
whose README says the images may be used however one wishes. Each chosen photo is rotated
upright (EXIF orientation applied), downscaled to at most ``MAX_SIDE`` pixels, re-encoded, and
stripped of every EXIF tag except the GPS block, so the workflow still reads its coordinates
from EXIF.

Usage: python dev/make_demo_data.py ../shared/data/exif-gps-photos data/demo/images
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageOps

MAX_SIDE = 512
GPS_IFD = 0x8825
# The 1x1 placeholder (Issue_508), the WebP copy of the HTC Desire JPEG (a duplicate picture),
# the 16-bit greyscale TIFFs and one of five near-identical FujiFilm frames are left out.
CHOSEN = [
    "jpg__Apple_iPhone_4.jpg",
    "jpg__Apple_iPhone_5.jpg",
    "jpg__Apple_iPhone_6.jpg",
    "jpg__Apple_iPhone_6_plus.jpg",
    "jpg__FujiFilm_FinePixS1Pro_1_.jpg",
    "jpg__FujiFilm_FinePixS1Pro_2_.jpg",
    "jpg__FujiFilm_FinePixS1Pro_3_.jpg",
    "jpg__FujiFilm_FinePixS1Pro_4_.jpg",
    "jpg__FujiFilm_FinePixS2Pro.jpg",
    "jpg__HTC_Desire.jpg",
    "jpg__Issue_173_dotnet_.jpg",
    "jpg__Nexus_4.jpg",
    "jpg__Nokia_Lumia_800.jpg",
    "jpg__Olympus_FE230-X790.jpg",
    "jpg__Oppo_R7_Plus.jpg",
    "jpg__Panasonic_DMC-LX3_Lumix_.jpg",
    "jpg__Samsung_SM-G935L_Galaxy_S7_Edge_.jpg",
    "jpg__Samsung_SM-N900A_Galaxy_Note_3_.jpg",
    "jpg__Sony_DSC-HX5V_2_.jpg",
    "webp__Issue_473_Java_.webp",
]


def main(source_dir: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in CHOSEN:
        with Image.open(source_dir / "images" / name) as original:
            gps = dict(original.getexif().get_ifd(GPS_IFD))
            image = ImageOps.exif_transpose(original).convert("RGB")
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        exif = Image.Exif()
        exif.get_ifd(GPS_IFD).update(gps)
        stem = name.rsplit(".", 1)[0].split("__", 1)[1]
        if name.endswith(".webp"):
            image.save(out_dir / f"{stem}.webp", quality=80, exif=exif.tobytes())
        else:
            image.save(out_dir / f"{stem}.jpg", quality=82, optimize=True, exif=exif.tobytes())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
