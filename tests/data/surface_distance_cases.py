"""Mask pairs for the NSD reference values: defined by formulas so that any NumPy version remakes them."""
import numpy as np


def ellipsoid(shape, centre, radii):
    z = np.indices(shape, dtype=np.float64)
    return sum(((z[a] - centre[a]) / radii[a]) ** 2 for a in range(3)) <= 1.0


def box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def wavy(shape, phase):
    """A blob with an uneven surface (many kinds of surface elements)."""
    z = np.indices(shape, dtype=np.float64)
    c = [(s - 1) / 2 for s in shape]
    r = np.sqrt(sum(((z[a] - c[a]) / (shape[a] / 2.6)) ** 2 for a in range(3)))
    bump = 0.18 * np.sin(1.3 * z[0] + phase) * np.cos(0.9 * z[1] - phase) + 0.12 * np.sin(0.7 * z[2] * (1 + phase))
    return r + bump <= 1.0


CASES = {
    "spheres_offset_iso1": (lambda: (ellipsoid((40, 40, 40), (20, 20, 20), (10, 10, 10)),
                                     ellipsoid((40, 40, 40), (22, 21, 20), (10, 10, 10))), (1.0, 1.0, 1.0)),
    "spheres_offset_iso1.5": (lambda: (ellipsoid((40, 40, 40), (20, 20, 20), (9, 9, 9)),
                                       ellipsoid((40, 40, 40), (23, 20, 18), (8, 8, 8))), (1.5, 1.5, 1.5)),
    "ellipsoids_aniso": (lambda: (ellipsoid((36, 44, 20), (18, 22, 10), (12, 14, 6)),
                                  ellipsoid((36, 44, 20), (19, 20, 11), (11, 15, 5))), (0.8, 1.2, 2.5)),
    "boxes_aniso": (lambda: (box((30, 30, 30), (5, 5, 5), (20, 22, 18)),
                             box((30, 30, 30), (7, 4, 6), (23, 20, 19))), (0.7, 1.1, 3.0)),
    "wavy_aniso": (lambda: (wavy((34, 30, 26), 0.3), wavy((34, 30, 26), 0.9)), (1.0, 0.9, 2.0)),
    "disjoint_far": (lambda: (box((40, 20, 20), (2, 5, 5), (10, 15, 15)),
                              box((40, 20, 20), (25, 5, 5), (35, 15, 15))), (1.0, 1.0, 1.0)),
    "pred_empty": (lambda: (box((20, 20, 20), (5, 5, 5), (10, 10, 10)), np.zeros((20, 20, 20), bool)),
                   (1.0, 1.0, 1.0)),
}
