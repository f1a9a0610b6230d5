#!/usr/bin/env bash
# A small set of real photographs for EVALUATION ONLY, from registry packages, labelled by the teachers:
#   scripts/photo_eval_data.sh [DATA_DIR]        (default data/; needs the label extra and ../shared/models)
#
#   DATA_DIR/photos_src/  18 photos: ultralytics' bus.jpg and zidane.jpg (PyPI ultralytics 8.4.190), insightface's
#                         t1.jpg (PyPI insightface 2.1, sdist), scikit-image's astronaut.png and camera.png (0.26.0),
#                         matplotlib's grace_hopper.jpg (3.11.2), face_recognition's biden.jpg, obama.jpg, obama2.jpg
#                         and obama3.jpg (PyPI face_recognition 1.3.0, sdist, MIT; White House photographs), and from
#                         Debian's opencv-doc 4.6.0 messi5.jpg, basketball1.png, left06.jpg, scenetext01.jpg and four
#                         tutorial photos (two portraits, two men in a glider, a roadside seen from a bus)
#   DATA_DIR/outdoor/     a second held-out real video, unlike the training footage: sports2d's Demo/demo.mp4
#                         (PyPI sports2d 0.8.34, sdist, BSD-3-Clause; two people walking and jumping in a park,
#                         backlit), every 10th frame labelled, split val
#   DATA_DIR/photos/      hevitpose label output, split val: the joints the teachers agree on; splits val_whole and
#                         val_upper: the people with a labelled hip, knee or ankle, and those without (portraits,
#                         half-length), for `hevitpose eval ... data.val_ann=annotations/person_keypoints_val_whole.json`
#                         and `bench/teacher_ap.py DATA_DIR/photos --split val_whole`
#   Both sets record each person's mask area (hevitpose label --mask-area): hevitpose eval --oks-area mask_area
#   scores OKS on it, as COCO does on its segmentation areas; the box's area (the default) forgives more.
#
# Framed as photos are (portraits, half-length, people cut by the edge, a lunge), unlike the training footage.
# Never train on it: the default weights' data comes only from the sources issue 9 names (scripts/default_data.sh).
# opencv-doc's Background_Subtraction_Tutorial_frame.jpg is left out on purpose: it is a frame of vtest.avi,
# a training video.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-data}
py=${PYTHON:-.venv/bin/python}
src="$data/photos_src"
dl="$data/photos_download"
mkdir -p "$src" "$dl"

if [ ! -f "$src/obama3.jpg" ] || [ ! -f "$dl/demo.mp4" ]; then
  ( cd "$dl"
    "$OLDPWD/$py" -m pip download -q --no-deps ultralytics==8.4.190 scikit-image==0.26.0 matplotlib==3.11.2 -d .
    # sdists: the test images and the demo video are not in the wheels
    "$OLDPWD/$py" -m pip download -q --no-deps --no-binary :all: insightface==2.1 \
      face_recognition==1.3.0 sports2d==0.8.34 -d .
    [ -f opencv-doc_4.6.0+dfsg-12_all.deb ] || apt-get download opencv-doc=4.6.0+dfsg-12 )
  unzip -o -q -j "$dl"/ultralytics-*.whl 'ultralytics/assets/bus.jpg' 'ultralytics/assets/zidane.jpg' -d "$src"
  unzip -o -q -j "$dl"/scikit_image-*.whl 'skimage/data/astronaut.png' 'skimage/data/camera.png' -d "$src"
  unzip -o -q -j "$dl"/matplotlib-*.whl 'matplotlib/mpl-data/sample_data/grace_hopper.jpg' -d "$src"
  tar -xzf "$dl"/insightface-2.1.tar.gz -O insightface-2.1/insightface/data/images/t1.jpg > "$src/t1.jpg"
  for f in biden obama obama2 obama3; do
    tar -xzf "$dl"/face_recognition-1.3.0.tar.gz -O "face_recognition-1.3.0/tests/test_images/$f.jpg" > "$src/$f.jpg"
  done
  tar -xzf "$dl"/sports2d-0.8.34.tar.gz -O sports2d-0.8.34/Sports2D/Demo/demo.mp4 > "$dl/demo.mp4"
  doc=./usr/share/doc/opencv-doc
  for f in examples/data/messi5.jpg examples/data/basketball1.png examples/data/left06.jpg \
    examples/text/scenetext01.jpg opencv4/html/227943776_1.jpg opencv4/html/230501201_1.jpg \
    opencv4/html/Template_Matching_Original_Image.jpg opencv4/html/detect_test2.jpg; do
    dpkg-deb --fsys-tarfile "$dl"/opencv-doc_*.deb | tar -x -O "$doc/$f" > "$src/$(basename "$f")"
  done
fi

# A set labelled by an earlier version of this script is labelled again, not kept: from another list of photos,
# or without the people's mask areas (mask_area, for hevitpose eval --oks-area mask_area)
current() { # ANN [PHOTO_DIR]
  [ -f "$1" ] && "$py" - "$@" <<'PY'
import json, os, sys
coco = json.load(open(sys.argv[1]))
same_photos = len(sys.argv) < 3 or {os.path.basename(i["source"]) for i in coco["images"]} == set(os.listdir(sys.argv[2]))
sys.exit(not (same_photos and all("mask_area" in a for a in coco["annotations"])))
PY
}
for set in photos outdoor; do
  ann="$data/$set/annotations/person_keypoints_val.json"
  if [ -f "$ann" ] && ! current "$ann" $([ $set = photos ] && echo "$src"); then
    echo "$data/$set was labelled by an earlier version of this script: labelling it again"
    rm -rf "${data:?}/$set"
  fi
done
label=(--split val --max-side 960 --multipose-size 640 --mask-area --threads 1 --no-progress)
[ -f "$data/photos/annotations/person_keypoints_val.json" ] || .venv/bin/hevitpose label "$src" "$data/photos" \
  "${label[@]}" --dedup 0
[ -f "$data/outdoor/annotations/person_keypoints_val.json" ] || .venv/bin/hevitpose label "$dl/demo.mp4" \
  "$data/outdoor" "${label[@]}" --every-n 10
"$py" - "$data/photos" <<'EOF'
import json, os, sys
root = sys.argv[1]
coco = json.load(open(f"{root}/annotations/person_keypoints_val.json"))
for split, whole in (("val_whole", True), ("val_upper", False)):
    anns = [a for a in coco["annotations"] if any(a["keypoints"][3 * j + 2] > 0 for j in range(11, 17)) == whole]
    ids = {a["image_id"] for a in anns}
    part = {**coco, "annotations": anns, "images": [i for i in coco["images"] if i["id"] in ids]}
    json.dump(part, open(f"{root}/annotations/person_keypoints_{split}.json", "w"))
    if not os.path.lexists(f"{root}/images/{split}"):
        os.symlink("val", f"{root}/images/{split}")
EOF
echo "evaluation photos ready in $data/photos and $data/outdoor (split val); never train on them"
