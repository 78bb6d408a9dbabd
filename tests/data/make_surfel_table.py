"""Remake totalseg/evaluate/surfel_areas.json: the surface pieces of each 2x2x2 voxel configuration.

Run with scikit-image installed (it is not a dependency): ``python3 tests/data/make_surfel_table.py``.
For code c (bit b set = corner ``itertools.product((0, 1), repeat=3)[b]`` inside), the marching-cubes
triangles of that cube, each as its area vector (|cross product| / 2, in units of the voxel faces) times 8,
so the table holds small integers. A configuration with more than four corners inside takes the triangles of
its complement (the side with fewer corners inside): that is how DeepMind's ``surface_distance`` resolves
them, and with it all 256 areas equal that package's table at any spacing (checked when this was made).
"""
import itertools
import json
from pathlib import Path

import numpy as np
from skimage.measure import marching_cubes

CORNERS = list(itertools.product((0, 1), repeat=3))


def pieces(code: int) -> list[list[int]]:
    if code in (0, 255):
        return []
    src = 255 - code if bin(code).count("1") > 4 else code
    cube = np.zeros((2, 2, 2), np.float32)
    for b, c in enumerate(CORNERS):
        if src >> b & 1:
            cube[c] = 1
    verts, faces, _, _ = marching_cubes(cube, 0.5, method="lorensen")
    out = []
    for a, b, c in faces:
        w = np.abs(np.cross(verts[b] - verts[a], verts[c] - verts[a])) / 2 * 8
        out.append([int(round(x)) for x in w])
    return out


if __name__ == "__main__":
    path = Path(__file__).resolve().parents[2] / "totalseg" / "evaluate" / "surfel_areas.json"
    path.write_text(json.dumps([pieces(c) for c in range(256)], separators=(",", ":")) + "\n")
    print(path)
