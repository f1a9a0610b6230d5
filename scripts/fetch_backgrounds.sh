#!/usr/bin/env bash
# Rebuilds training/synth/assets/backgrounds/ (committed; hevitpose synth reads it, nothing downloads at
# run time): people-free photographs from two Debian wallpaper packages, fetched with apt-get download,
# unpacked with dpkg-deb -x (nothing is installed), scaled to 640 pixels on the long side, JPEG quality 88.
# Every photo was looked at for people; licences and authors: training/synth/assets/backgrounds/README.md.
#   scripts/fetch_backgrounds.sh            (needs apt-get, dpkg-deb and the project's .venv with OpenCV)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
out=training/synth/assets/backgrounds
work=$(mktemp -d)
chmod a+rwx "$work"   # apt-get download writes there as _apt
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download lomiri-wallpapers-16.04 mate-backgrounds >/dev/null)
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
"$py" - "$work/root/usr/share/backgrounds" "$out" <<'PY'
import sys
from pathlib import Path

import cv2

src, out = Path(sys.argv[1]), Path(sys.argv[2])
# (file in the package, name here); checked by eye: no people, no faces, no text.
PHOTOS = [
    ("Picture_1A_by_freespace.jpg", "brushes.jpg"),
    ("Wine_by_Jakkub_Mede.jpg", "living_room.jpg"),
    ("greentock_by_Peter_Nerlich.jpg", "wall_clock.jpg"),
    ("seeding_by_Clements_Engelhardt.jpg", "dandelions.jpg"),
    ("aitzgorri_by_Aitzol_Berasategi.jpg", "mountain_meadow.jpg"),
    ("Dragonfly_by_Bolly.jpg", "tree.jpg"),
    ("friends_by_Aitzol_Berasategi.jpg", "dogs_at_a_window.jpg"),
    ("free_by_Peter_Nerlich.jpg", "ceiling_lamps.jpg"),
    ("picosdeeuropa_by_Aitzol_Berasategi.jpg", "mountain_path.jpg"),
    ("Picture_0B_by_freespace.jpg", "fig_on_concrete.jpg"),
    ("life_by_Aitzol_Berasategi.jpg", "forest_stream.jpg"),
    ("Bridge_by_Sander_Klootwijk.jpg", "bridge_cables.jpg"),
    ("mate/nature/Dune.jpg", "dune.jpg"),
    ("mate/nature/Wood.jpg", "wood.jpg"),
    ("mate/nature/GreenMeadow.jpg", "grass.jpg"),
    ("mate/nature/Storm.jpg", "storm_road.jpg"),
    ("mate/nature/Garden.jpg", "garden.jpg"),
]
out.mkdir(parents=True, exist_ok=True)
for name, dest in PHOTOS:
    img = cv2.imread(str(src / name), cv2.IMREAD_COLOR)
    if img is None:
        sys.exit(f"fetch_backgrounds: cannot read {name} from the packages")
    scale = 640 / max(img.shape[:2])
    img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(out / dest), img, [cv2.IMWRITE_JPEG_QUALITY, 88])
print(f"{len(PHOTOS)} photographs in {out}")
PY
