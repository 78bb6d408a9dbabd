"""Task postprocessing on small synthetic label maps (vertebrae_pp, vertebrae_pp_refined)."""
import numpy as np

from totalseg.assemble import postprocess
from totalseg.registry import get_task

VERTEBRAE = get_task("vertebrae_pp").classes
IDS = {name: k for k, name in VERTEBRAE.items()}
ISO = np.array([1.5, 1.5, 1.5], dtype=np.float32)  # the task's model resolution
VOXEL_MM3 = float(np.prod(ISO))


def _stack(labels_bottom_up: list[int], height: int = 6, gap: int = 0) -> np.ndarray:
    """Bodies of 6×6×``height`` voxels stacked along z (axis 2), bottom first, ``gap`` apart."""
    out = np.zeros((12, 12, len(labels_bottom_up) * (height + gap) + 8), dtype=np.uint8)
    for i, k in enumerate(labels_bottom_up):
        z0 = 4 + i * (height + gap)
        out[3:9, 3:9, z0:z0 + height] = k
    return out


def _ids_by_height(labels: np.ndarray) -> list[int]:
    """The label of each body, bottom first (one label per z range)."""
    zs = {int(k): np.nonzero(labels == k)[2].mean() for k in np.unique(labels) if k}
    return sorted(zs, key=zs.get)


def test_labels_touch_is_six_connected():
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    a[1, 1, 1], a[2, 2, 1] = 3, 4  # diagonal neighbours only
    assert not postprocess.labels_touch(a)
    a[2, 1, 1] = 4
    assert postprocess.labels_touch(a)
    b = np.zeros((4, 4, 4), dtype=np.uint8)
    b[1, 1, 1:3] = 5  # one label touching itself
    assert not postprocess.labels_touch(b)


def test_touching_bodies_relabelled_upwards_from_highest_label():
    # L3 under L4: the mixed-up pair touches; counting starts at the lowest body with L4.
    mixed = _stack([IDS["vertebrae_L3"], IDS["vertebrae_L4"], IDS["vertebrae_L2"]], gap=0)
    mixed[3:9, 3:9, 4 + 12:4 + 18] = 0  # split the third body off from the pair...
    mixed[3:9, 3:9, 4 + 13:4 + 19] = IDS["vertebrae_L2"]  # ...by a one-voxel gap
    out = postprocess.relabel_by_height(mixed, VERTEBRAE, VOXEL_MM3)
    # Two bodies: the touching pair is one, the separate block the other.
    assert _ids_by_height(out) == [IDS["vertebrae_L4"], IDS["vertebrae_L3"]]
    assert set(np.unique(out[mixed > 0])) == {IDS["vertebrae_L4"], IDS["vertebrae_L3"]}
    assert not np.any(out[mixed == 0])


def test_head_scans_count_down_from_c1():
    # C1 present, L5 absent: the top body becomes C1, the next C2, and so on.
    mixed = _stack([IDS["vertebrae_C5"], IDS["vertebrae_C1"], IDS["vertebrae_C3"]], gap=1)
    mixed[3:9, 3:9, 4 + 7 + 6] = IDS["vertebrae_C2"]  # a C2 slab joins the C1 body to C3's
    out = postprocess.relabel_by_height(mixed, VERTEBRAE, VOXEL_MM3)
    assert _ids_by_height(out) == [IDS["vertebrae_C2"], IDS["vertebrae_C1"]]


def test_with_l5_counting_starts_at_the_bottom():
    mixed = _stack([IDS["vertebrae_C7"], IDS["vertebrae_C1"], IDS["vertebrae_L5"]], gap=1)
    out = postprocess.relabel_by_height(mixed, VERTEBRAE, VOXEL_MM3)
    assert _ids_by_height(out) == [IDS["vertebrae_L5"], IDS["vertebrae_L4"], IDS["vertebrae_L3"]]


def test_relabel_drops_bodies_under_100_mm3():
    labels = _stack([IDS["vertebrae_T5"], IDS["vertebrae_T4"]], gap=2)
    labels[0:5, 0:5, 0:2] = IDS["vertebrae_T9"]  # 50 voxels = 168.75 mm³ at 1.5 mm: kept
    labels[11, 11, 20] = IDS["vertebrae_T1"]  # 3.375 mm³: dropped
    out = postprocess.relabel_by_height(labels, VERTEBRAE, VOXEL_MM3)
    assert out[11, 11, 20] == 0
    # The highest id among the kept bodies (T9) starts the count at the bottom.
    assert _ids_by_height(out) == [IDS["vertebrae_T9"], IDS["vertebrae_T8"], IDS["vertebrae_T7"]]


def test_no_touching_labels_keeps_labels_and_small_blobs():
    labels = _stack([IDS["vertebrae_T5"], IDS["vertebrae_T4"]], gap=8)
    labels[0, 0, 0] = IDS["vertebrae_T9"]
    out = labels.copy()
    postprocess.apply("vertebrae_pp", out, VERTEBRAE, ISO)
    assert out[0, 0, 0] == IDS["vertebrae_T9"]
    for k in (IDS["vertebrae_T5"], IDS["vertebrae_T4"]):
        assert np.all(out[labels == k] == k)


def test_growth_is_a_3mm_ball_into_background_only():
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[10, 10, 10] = IDS["vertebrae_T3"]
    labels[10, 10, 11] = IDS["vertebrae_T2"]  # touching: would relabel, so test growth directly
    grown = postprocess.grow_labels(labels, VERTEBRAE, ISO, 3.0)
    # Neither label takes the other's voxel.
    assert grown[10, 10, 10] == IDS["vertebrae_T3"] and grown[10, 10, 11] == IDS["vertebrae_T2"]
    # 3 mm at 1.5 mm is two voxels along each axis, not three; and not diagonally to (2, 2, 0).
    assert grown[11, 10, 10] == IDS["vertebrae_T2"]  # both reach it: the lower id wins
    assert grown[12, 10, 10] == IDS["vertebrae_T3"]  # only T3 (T2 is √5 voxels away)
    assert grown[13, 10, 10] == 0
    assert grown[12, 12, 10] == 0
    single = np.zeros((9, 9, 9), dtype=np.uint8)
    single[4, 4, 4] = 7
    ball = postprocess.grow_labels(single, VERTEBRAE, ISO, 3.0) == 7
    assert ball.sum() == 33  # |offsets|² ≤ 4 in voxel units
    assert np.array_equal(ball, ball[::-1, ::-1, ::-1])


def test_fractional_radius_gives_off_centre_kernel():
    # 2 mm on 1.5 mm voxels: offsets -4/3, -1/3, 2/3, 5/3 (centre: index 2, offset 2/3); only the
    # 2×2×2 block of offsets -1/3 and 2/3 lies in the ball, so labels grow one voxel towards the
    # low indices only, as on the official grid.
    kernel = postprocess.ellipsoid(ISO, 2.0)
    assert kernel.shape == (4, 4, 4) and kernel.sum() == 8 and kernel[1:3, 1:3, 1:3].all()
    one = np.zeros((7, 7, 7), dtype=np.uint8)
    one[3, 3, 3] = 1
    grown = postprocess.grow_labels(one, VERTEBRAE, ISO, 2.0)
    assert grown[2, 3, 3] == 1 and grown[4, 3, 3] == 0 and grown.sum() == 8
    # 2 mm on 3 mm voxels: offsets -2/3, 1/3, 4/3; no neighbour is reached at all.
    assert postprocess.ellipsoid(np.array([3.0, 3.0, 3.0], dtype=np.float32), 2.0).sum() == 1


def test_refine_grows_2mm_then_clips_to_bodies():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[4:6, 4:6, 4:6] = IDS["vertebrae_L1"]
    bodies = np.ones_like(labels)
    bodies[:, :, 8:] = 2  # discs
    out = postprocess.refine_vertebrae(labels, bodies, VERTEBRAE, np.array([1.0, 1.0, 1.0], dtype=np.float32))
    assert np.all(out[labels > 0] == IDS["vertebrae_L1"])
    assert out[4, 4, 7] == IDS["vertebrae_L1"] and out[4, 4, 8] == 0  # grown 2, then clipped to label 1
    assert out[4, 4, 1] == 0  # 3 away: not reached
    bodies[4, 4, 4] = 0
    assert postprocess.refine_vertebrae(labels, bodies, VERTEBRAE, np.ones(3, np.float32))[4, 4, 4] == 0
