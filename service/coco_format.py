"""``format=coco``: persons as COCO keypoint results entries, the list that pycocotools'
``COCO.loadRes`` and ``COCOeval`` (and the tools built on them) read.

One entry per person: ``image_id``, ``category_id`` 1 (COCO's "person"), ``keypoints`` as a flat
``[x, y, s] x 17`` in COCO's keypoint order, ``score`` and ``bbox`` as ``[x, y, w, h]``. The third
value of each keypoint is the keypoint's score, as in the results files COCO's detectors submit
(its annotation files put a visibility flag 0/1/2 there; ``COCOeval`` reads it from the ground truth
only). Entries are built from the default format's person objects, so both formats carry the same
rounded numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

from model.keypoints import COCO17
from service import errors
from service.schemas import CocoEntry, Person, TrackedCocoEntry, TrackedPerson

CATEGORY_PERSON = 1


def check_keypoints(keypoint_names: Sequence[str]) -> None:
    """Refuse ``format=coco`` (422) for a model whose keypoints are not COCO's 17 (MPII's, say):
    its entries would not be COCO keypoints."""
    missing = [n for n in COCO17.names if n not in keypoint_names]
    if missing:
        raise errors.invalid_field(
            f"format: coco needs a model with COCO's 17 keypoints; the loaded one lacks {', '.join(missing)}"
        )


def person_entry(person: Person, image_id: int) -> CocoEntry:
    """One person of the default format as a results entry; a video frame's (a
    :class:`TrackedPerson`) keeps its ``track_id``: PoseTrack's name for it, COCO's tools ignore it."""
    by_name = {k.name: k for k in person.keypoints}
    flat: list[float] = []
    for name in COCO17.names:  # COCO's order, whatever order the model's keypoints come in
        k = by_name[name]
        flat += [k.x, k.y, k.score]
    x1, y1, x2, y2 = person.bbox
    # Rounded again: the difference of two 2-decimal numbers is not always one.
    bbox = [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)]
    if isinstance(person, TrackedPerson):
        return TrackedCocoEntry(image_id=image_id, category_id=CATEGORY_PERSON, keypoints=flat, score=person.score,
                                bbox=bbox, track_id=person.track_id)  # fmt: skip
    return CocoEntry(image_id=image_id, category_id=CATEGORY_PERSON, keypoints=flat, score=person.score, bbox=bbox)


def entries(persons: Sequence[Person], image_id: int) -> list[CocoEntry]:
    return [person_entry(p, image_id) for p in persons]
