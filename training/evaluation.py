"""Validation metrics, computed the way the references compute them.

MPII: PCKh by the official protocol as MMPose 0.29's ``TopDownMpiiDataset.evaluate``
implements it: distances normalised by 0.6 x the diagonal of the head box (SC_BIAS),
only joints the ground truth marks visible (1 - ``jnt_missing``), per-joint PCKh averaged
over left/right into groups, and a mean weighted by joint counts without pelvis and thorax.

COCO: MMPose's ``TopDownCocoDataset.evaluate`` -- each person's score rescored by the mean
confidence of its keypoints above ``vis_thr``, OKS-NMS per image, then pycocotools'
``COCOeval`` for keypoints with COCO's sigmas.

:func:`evaluate` picks the protocol the recipe's dataset calls for.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.keypoints import COCO17

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.dataset import TopDownDataset

# The metric that picks the best checkpoint.
PRIMARY_METRIC = {"coco": "AP", "mpii": "PCKh"}

MPII_GROUPS = {
    "Head": ("head",),
    "Shoulder": ("lsho", "rsho"),
    "Elbow": ("lelb", "relb"),
    "Wrist": ("lwri", "rwri"),
    "Hip": ("lhip", "rhip"),
    "Knee": ("lkne", "rkne"),
    "Ankle": ("lank", "rank"),
}
SC_BIAS = 0.6
COCO_STATS = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")


# --------------------------------------------------------------------------- MPII


def load_mpii_gt(path: str | Path) -> dict[str, np.ndarray]:
    """The official ``mpii_gt_val.mat``: joint names, missing flags, positions, head boxes."""
    from scipy.io import loadmat

    gt = loadmat(str(path))
    for key in ("dataset_joints", "jnt_missing", "pos_gt_src", "headboxes_src"):
        if key not in gt:
            raise ValueError(f"{path}: no {key!r}; not an MPII ground-truth file")
    names = [str(np.asarray(n).ravel()[0]) for n in np.asarray(gt["dataset_joints"]).ravel()]
    return {
        "joint_names": np.array(names),
        "jnt_missing": np.asarray(gt["jnt_missing"], dtype=np.float64),  # (16, N)
        "pos_gt_src": np.asarray(gt["pos_gt_src"], dtype=np.float64),  # (16, 2, N), 1-based
        "headboxes_src": np.asarray(gt["headboxes_src"], dtype=np.float64),  # (2, 2, N)
    }


def mpii_pckh(predictions: np.ndarray, gt: dict[str, np.ndarray]) -> dict[str, float]:
    """(N, 16, 2) predictions in 0-based image pixels, in the order of ``mpii_val.json``.

    Returns percentages: the seven groups, ``PCKh`` (@0.5, the mean) and ``PCKh@0.1``.
    """
    preds = np.asarray(predictions, dtype=np.float64)[..., :2] + 1.0  # Matlab's 1-based pixels
    pos_gt = gt["pos_gt_src"]
    if preds.shape[0] != pos_gt.shape[2]:
        raise ValueError(f"{preds.shape[0]} predictions for {pos_gt.shape[2]} ground-truth people")
    names = list(gt["joint_names"])
    visible = 1 - gt["jnt_missing"]
    uv_err = np.linalg.norm(np.transpose(preds, [1, 2, 0]) - pos_gt, axis=1)  # (16, N)
    headsizes = np.linalg.norm(gt["headboxes_src"][1] - gt["headboxes_src"][0], axis=0) * SC_BIAS
    scaled = uv_err / headsizes[None] * visible
    count = visible.sum(axis=1)

    def pck(threshold: float) -> np.ndarray:
        hits = (scaled <= threshold) * visible
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100.0 * hits.sum(axis=1) / count

    # Pelvis and thorax are left out of the mean, as in the official evaluation.
    keep = np.ones(len(names), dtype=bool)
    keep[[names.index("pelv"), names.index("thor")]] = False
    ratio = np.where(keep, count, 0) / count[keep].sum()
    at5, at1 = pck(0.5), pck(0.1)
    out = {group: float(np.mean([at5[names.index(j)] for j in joints])) for group, joints in MPII_GROUPS.items()}
    out["PCKh"] = float(np.nansum(at5 * ratio))
    out["PCKh@0.1"] = float(np.nansum(at1 * ratio))
    return out


# --------------------------------------------------------------------------- COCO


def oks_iou(g: np.ndarray, d: np.ndarray, area_g: float, area_d: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """OKS of one person ``g`` (K, 3) against many ``d`` (M, K, 3), as MMPose's ``oks_iou``."""
    variances = (sigmas * 2) ** 2
    dx = d[..., 0] - g[None, :, 0]
    dy = d[..., 1] - g[None, :, 1]
    e = (dx**2 + dy**2) / variances / ((area_g + area_d[:, None]) / 2 + np.spacing(1)) / 2
    return np.exp(-e).mean(axis=1) if d.shape[1] else np.zeros(len(d))


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, thr: float, sigmas: np.ndarray) -> list[int]:
    """Greedy NMS by OKS: keep the best, drop those with OKS > ``thr`` to it, repeat."""
    order = list(np.argsort(scores)[::-1])
    keep = []
    while order:
        i = order[0]
        keep.append(int(i))
        rest = np.asarray(order[1:], dtype=np.int64)
        if len(rest) == 0:
            break
        ious = oks_iou(keypoints[i], keypoints[rest], areas[i], areas[rest], sigmas)
        order = list(rest[ious <= thr])
    return keep


def rescore(keypoint_scores: np.ndarray, box_scores: np.ndarray, vis_thr: float) -> np.ndarray:
    """Box score x mean keypoint confidence over keypoints above ``vis_thr``."""
    mask = keypoint_scores > vis_thr
    n = mask.sum(axis=1)
    kpt = np.where(n > 0, (keypoint_scores * mask).sum(axis=1) / np.maximum(n, 1), 0.0)
    return kpt * box_scores


def coco_results(
    image_ids: np.ndarray,
    keypoints: np.ndarray,
    keypoint_scores: np.ndarray,
    box_scores: np.ndarray,
    areas: np.ndarray,
    use_nms: bool = True,
    oks_thr: float = 0.9,
    vis_thr: float = 0.2,
    sigmas: np.ndarray | None = None,
) -> list[dict]:
    """Per-person predictions -> COCO result dicts, after rescoring and OKS-NMS per image.

    ``areas`` are the padded box areas (scale_w x scale_h, pixels) that MMPose gives NMS.
    """
    sigmas = np.asarray(COCO17.sigmas if sigmas is None else sigmas)
    scores = rescore(keypoint_scores, box_scores, vis_thr)
    kps = np.concatenate([keypoints, keypoint_scores[..., None]], axis=-1)
    results = []
    for image_id in np.unique(image_ids):
        rows = np.flatnonzero(image_ids == image_id)
        if use_nms:
            rows = rows[oks_nms(kps[rows], scores[rows], areas[rows], oks_thr, sigmas)]
        for r in rows:
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": 1,
                    "keypoints": [float(v) for v in kps[r].ravel()],
                    "score": float(scores[r]),
                }
            )
    return results


def _coco_stats(gt: dict, results: list[dict], sigmas: np.ndarray | None, image_ids: list[int] | None) -> np.ndarray:
    """pycocotools' ten keypoint stats of ``results`` against the COCO dict ``gt``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return np.zeros(len(COCO_STATS))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        coco_dt = coco.loadRes(json.loads(json.dumps(results)))  # a copy: loadRes adds keys in place
        evaluator = COCOeval(coco, coco_dt, "keypoints")
        if sigmas is not None:
            evaluator.params.kpt_oks_sigmas = np.asarray(sigmas)
        evaluator.params.useSegm = None
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats, dtype=float)


def load_gt(ann_file: str | Path, area_field: str = "area") -> dict:
    """A COCO keypoints file whose ``area`` (what OKS scales by) is taken from ``area_field``."""
    gt = json.loads(Path(ann_file).read_text())
    if area_field != "area":
        missing = sum(area_field not in ann for ann in gt["annotations"])
        if missing:
            raise ValueError(
                f"{ann_file}: {missing} of {len(gt['annotations'])} people have no {area_field!r} "
                "(hevitpose label --mask-area writes it)"
            )
        gt["annotations"] = [{**ann, "area": ann[area_field]} for ann in gt["annotations"]]
    return gt


def coco_keypoint_ap(
    ann_file: str | Path,
    results: list[dict],
    sigmas: np.ndarray | None = None,
    image_ids: list[int] | None = None,
    area_field: str = "area",
) -> dict[str, float]:
    """pycocotools' COCOeval for keypoints; AP, AP50, AP75, APM, APL, AR, ... in [0, 1].

    ``image_ids`` restricts the evaluation to those images (a quick partial validation);
    ``area_field`` names the annotation field OKS scales by (``load_gt``).
    """
    stats = _coco_stats(load_gt(ann_file, area_field), results, sigmas, image_ids)
    return {name: float(v) for name, v in zip(COCO_STATS, stats)}


def bootstrap_ap(
    ann_file: str | Path,
    runs: list[list[dict]],
    resamples: int,
    seed: int = 0,
    sigmas: np.ndarray | None = None,
    image_ids: list[int] | None = None,
    area_field: str = "area",
) -> np.ndarray:
    """AP of each run's results on ``resamples`` resamplings of the images with replacement: (resamples, runs).

    Every run is scored on the same resampled images, so the spread of a difference between two runs
    is the paired one: on sets of a few dozen people the images' own difficulty dominates a single
    run's interval, and largely cancels in the difference.
    """
    gt = load_gt(ann_file, area_field)
    ids = sorted(image_ids) if image_ids is not None else sorted(image["id"] for image in gt["images"])
    images = {image["id"]: image for image in gt["images"]}
    anns_of: dict[int, list[dict]] = {i: [] for i in ids}
    for ann in gt["annotations"]:
        anns_of.setdefault(ann["image_id"], []).append(ann)
    dts_of = [{i: [] for i in ids} for _ in runs]
    for run, dts in zip(runs, dts_of):
        for dt in run:
            dts.setdefault(dt["image_id"], []).append(dt)
    rng = np.random.default_rng(seed)
    aps = np.zeros((resamples, len(runs)))
    for r in range(resamples):
        # each drawn image becomes a new image, so an image drawn twice counts twice
        picks = rng.choice(ids, size=len(ids), replace=True)
        new_images, new_anns = [], []
        for new_id, old_id in enumerate(picks, start=1):
            new_images.append({**images[old_id], "id": new_id})
            new_anns += [{**a, "id": len(new_anns) + k + 1, "image_id": new_id} for k, a in enumerate(anns_of[old_id])]
        resampled = {**gt, "images": new_images, "annotations": new_anns}
        for j, dts in enumerate(dts_of):
            results = [{**d, "image_id": new_id} for new_id, old_id in enumerate(picks, start=1) for d in dts[old_id]]
            aps[r, j] = _coco_stats(resampled, results, sigmas, None)[0]
    return aps


# --------------------------------------------------------------------------- the recipe's protocol


def dataset_results(cfg: TrainConfig, dataset: TopDownDataset, pred: dict[str, np.ndarray]) -> list[dict]:
    """COCO result dicts of predictions for a COCO-style ``dataset`` (rows whose image failed are left out)."""
    inst = dataset.instances
    valid = np.zeros(len(inst), dtype=bool)
    valid[pred["index"]] = pred["valid"]
    rows = np.zeros(len(inst), dtype=int)
    rows[pred["index"]] = np.arange(len(pred["index"]))
    return coco_results(
        inst.image_ids[valid],
        pred["keypoints"][rows[valid]],
        pred["scores"][rows[valid]],
        inst.bbox_scores[valid],
        np.prod(inst.scales[valid], axis=1),
        use_nms=cfg.eval.use_nms,
        oks_thr=cfg.eval.oks_thr,
        vis_thr=cfg.eval.vis_thr,
    )


def evaluate(cfg: TrainConfig, dataset: TopDownDataset, pred: dict[str, np.ndarray]) -> dict[str, float]:
    """Metrics of predictions for every row of ``dataset`` (rows whose image failed are misses)."""
    if cfg.data.dataset == "mpii":
        inst = dataset.instances
        keypoints = np.zeros((len(inst), inst.keypoint_set.num_keypoints, 2))
        keypoints[pred["index"]] = pred["keypoints"]
        return mpii_pckh(keypoints, load_mpii_gt(Path(cfg.data.root) / cfg.data.mpii_gt))
    ann = Path(cfg.data.root) / cfg.data.val_ann
    results = dataset_results(cfg, dataset, pred)
    return coco_keypoint_ap(
        ann, results, image_ids=dataset.instances.meta.get("image_ids"), area_field=cfg.eval.oks_area
    )
