"""Agreement of a built detector with its FP32 model, judged by the detections a user would see.

A raw ``[1, 4 + nc, N]`` output holds thousands of background anchors whose boxes nobody sees: the
largest error anywhere in it says little about the model. Here both outputs are decoded and NMS'd the
way a user's application does (score >= ``conf``, class-aware NMS at IoU 0.5), and the artifact's
detections are matched to FP32's (same class, IoU >= ``match_iou``). The figures:

* ``kept``: the share of FP32's detections the artifact still makes: some box of the artifact's (before
  NMS, so a different survivor among near-duplicates is not a loss) at IoU >= 0.5 scoring the same class
  at least ``conf - margin`` (a detection whose score moved from 0.26 to 0.24 counts as kept; how far
  scores moved is ``score_error``'s job, not the threshold's).
* ``score_error`` (mean) and ``score_error_max``: ``|score - score_fp32|`` over kept detections, the
  artifact's score being its best-scoring matching box (the one its NMS keeps).
* ``box_iou``: the mean IoU of that box with FP32's.
* ``added``: artifact detections at ``>= conf`` that match no FP32 detection at ``conf - margin``.
* ``active_scores_cosine``: the cosine of the class scores over the anchors FP32 scores at
  ``>= score_floor`` (the anchors a detection could come from), not over the background.

This is agreement with FP32, not mAP: it says the artifact computes what the float model computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.runners import detcore

#: Score threshold of "a detection a user sees" (Ultralytics' default ``conf``).
DETECTION_CONF = 0.25
#: How far under ``conf`` an artifact's detection may score and still count as kept.
MATCH_MARGIN = 0.1
#: Same class and at least this IoU: the same detection.
MATCH_IOU = 0.5
#: Anchors FP32 scores at least this high are where detections can come from.
SCORE_FLOOR = 0.05


@dataclass(frozen=True)
class Matching:
    """Detections of one image matched against FP32's (see :func:`match`)."""

    reference: int
    matched: int
    added: int
    score_errors: list[float]
    ious: list[float]


def detections(output: np.ndarray, head: str, conf: float) -> np.ndarray:
    """Decoded, NMS'd ``(K, 6)`` rows ``x0, y0, x1, y1, score, class`` of one image's output."""
    return detcore.nms(detcore.candidates(output, head, conf=conf), iou=0.5, max_det=300)


def match(ref: np.ndarray, got: np.ndarray, head: str, conf: float = DETECTION_CONF) -> Matching:
    """Match the artifact's detections (``got``) to FP32's (``ref``) on one image, greedily by score."""
    low = max(conf - MATCH_MARGIN, 1e-3)
    ref_dets, got_dets = detections(ref, head, conf), detections(got, head, low)
    used = np.zeros(len(got_dets), dtype=bool)
    errors: list[float] = []
    ious: list[float] = []
    for det in ref_dets:  # best first
        same = np.nonzero((got_dets[:, 5] == det[5]) & ~used)[0] if len(got_dets) else np.array([], int)
        if not len(same):
            continue
        overlap = detcore._iou_one_to_many(det[:4], got_dets[same, :4])
        best = int(np.argmax(overlap))
        if overlap[best] >= MATCH_IOU:
            used[same[best]] = True
            errors.append(abs(float(got_dets[same[best], 4]) - float(det[4])))
            ious.append(float(overlap[best]))
    added = _added(
        detections(ref, head, low), got_dets[got_dets[:, 4] >= conf] if len(got_dets) else got_dets
    )
    return Matching(len(ref_dets), len(errors), added, errors, ious)


def _added(ref_low: np.ndarray, got_high: np.ndarray) -> int:
    """Artifact detections at ``conf`` that no FP32 detection at ``conf - margin`` matches."""
    count = 0
    for det in got_high:
        same = ref_low[ref_low[:, 5] == det[5]] if len(ref_low) else ref_low
        if not len(same) or detcore._iou_one_to_many(det[:4], same[:, :4]).max() < MATCH_IOU:
            count += 1
    return count


def active_scores(output: np.ndarray, head: str) -> np.ndarray:
    """Per-anchor class scores ``(N, nc)`` as a detection would read them (objectness folded in)."""
    rows = detcore.rows(output, head)
    if head == "yolov8":
        return rows[:, 4:]
    scores = rows[:, 4:5] if rows.shape[1] <= 5 else rows[:, 5:] * rows[:, 4:5]
    return scores


def agreement(
    refs: list[np.ndarray], gots: list[np.ndarray], head: str, conf: float = DETECTION_CONF
) -> dict[str, float | int | None]:
    """Detection agreement of ``gots`` with ``refs`` (one detector output per check image).

    Returns:
        ``{"images", "detections", "kept", "score_error", "score_error_max", "box_iou", "added",
        "active_anchors", "active_scores_cosine"}``; figures over no matched detection are ``None``.

    Example:
        >>> out = np.zeros((1, 6, 4), np.float32)
        >>> out[0, :4, 0], out[0, 4, 0] = (10, 10, 4, 4), 0.9
        >>> agreement([out], [out], "yolov8")["kept"]
        1.0
    """
    rows = [match(r, g, head, conf) for r, g in zip(refs, gots, strict=True)]
    total = sum(m.reference for m in rows)
    errors = [e for m in rows for e in m.score_errors]
    ious = [i for m in rows for i in m.ious]
    ref_scores = [active_scores(r, head) for r in refs]
    got_scores = [active_scores(g, head) for g in gots]
    active = [s.max(1) >= SCORE_FLOOR for s in ref_scores]
    a = np.concatenate([s[m].ravel() for s, m in zip(ref_scores, active, strict=True)]).astype(np.float64)
    b = np.concatenate([s[m].ravel() for s, m in zip(got_scores, active, strict=True)]).astype(np.float64)
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return {
        "images": len(rows),
        "detections": total,
        "kept": round(sum(m.matched for m in rows) / total, 4) if total else None,
        "score_error": round(float(np.mean(errors)), 4) if errors else None,
        "score_error_max": round(float(np.max(errors)), 4) if errors else None,
        "box_iou": round(float(np.mean(ious)), 4) if ious else None,
        "added": sum(m.added for m in rows),
        "active_anchors": int(sum(int(m.sum()) for m in active)),
        "active_scores_cosine": round(float(a @ b / denom), 6) if denom > 0 else None,
    }
