"""Ordering images for a calibration set by class and object size (stratified sampling).

Box sizes use the COCO thresholds (area < 32² small, < 96² medium, else large) measured in
**network-input pixels**, i.e. after a box is scaled like its image by the preprocessing: the size the
detector sees, whatever the source resolution.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from edgekit.data.preprocess import PreprocessSpec

SMALL_MAX_AREA = 32.0**2
MEDIUM_MAX_AREA = 96.0**2
SIZE_BUCKETS = ("small", "medium", "large")


def size_bucket(area_input_px: float) -> str:
    """COCO size bucket of a box area given in network-input pixels."""
    if area_input_px < SMALL_MAX_AREA:
        return "small"
    return "medium" if area_input_px < MEDIUM_MAX_AREA else "large"


def input_areas(boxes_xyxy: np.ndarray, width: int, height: int, spec: PreprocessSpec) -> np.ndarray:
    """Areas of pixel ``xyxy`` boxes once their image is resized to the network input."""
    size = spec.input_size
    sx, sy = (
        (size / width, size / height) if spec.resize == "stretch" else (min(size / width, size / height),) * 2
    )
    w = (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]).clip(min=0) * sx
    h = (boxes_xyxy[:, 3] - boxes_xyxy[:, 1]).clip(min=0) * sy
    return (w * h).astype(np.float64)


def stratified_order(labels: list[tuple[np.ndarray, np.ndarray]], seed: int) -> list[int]:
    """Order images so that every prefix covers classes and object sizes as evenly as possible.

    Args:
        labels: Per image ``(classes (K,), input_areas (K,))``; images without boxes form a background group.
        seed: Shuffle seed inside each group.

    Returns:
        A permutation of indices: round-robin over class groups, rarest class first, skipping images
        already taken; inside a group images alternate small / medium / large (median size of that class
        in the image). So with ``count >= number of groups`` every class is represented.
    """
    rng = np.random.default_rng(seed)
    groups: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for idx, (classes, areas) in enumerate(labels):
        if len(classes) == 0:
            groups[-1].append((idx, "none"))
        for cls in np.unique(classes):
            groups[int(cls)].append((idx, size_bucket(float(np.median(areas[classes == cls])))))
    queues = {k: [i for i, _ in _interleave_sizes(m, rng)] for k, m in groups.items()}
    keys = sorted(queues, key=lambda k: (len(queues[k]), k))
    cursors = {k: iter(q) for k, q in queues.items()}
    order: list[int] = []
    taken: set[int] = set()
    while len(order) < len(labels):
        for key in keys:
            # Each cursor only moves forward, so the whole ordering is linear in the number of entries.
            nxt = next((i for i in cursors[key] if i not in taken), None)
            if nxt is not None:
                taken.add(nxt)
                order.append(nxt)
    return order


def _interleave_sizes(members: list[tuple[int, str]], rng: np.random.Generator) -> list[tuple[int, str]]:
    lanes = [[m for m in members if m[1] == b] for b in (*SIZE_BUCKETS, "none")]
    lanes = [lane for lane in lanes if lane]
    for lane in lanes:
        rng.shuffle(lane)
    return [lane[i] for i in range(max(map(len, lanes))) for lane in lanes if i < len(lane)]
