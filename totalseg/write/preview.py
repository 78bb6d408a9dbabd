"""``--preview``: a 3D picture of all classes, seen from the front and from the side (PNG).

Surfaces of every present class are extracted in one pass (VTK discrete flying edges), smoothed,
and drawn in the colours of the official label table (the colours the multilabel file's table
gives each label) with parallel projection. The front view looks at the patient's face (patient's
right on the left of the picture), the side view looks from the patient's right (anterior on the
right). Lighting is ambient + diffuse, no specular highlight, so every pixel of a class is a
darker or lighter shade of exactly its colour on a black background.

Rendering is offscreen: with no X display VTK's EGL window is used (Mesa's software EGL works on
machines without a GPU). VTK is an optional extra: ``pip install "totalseg[preview]"``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from totalseg.errors import UserError
from totalseg.prepare.orient import ras_array
from totalseg.write.atomic import write_atomic
from totalseg.write.labelmap import _PALETTE  # the label table's colours, shared on purpose

# Pixels per mm of the rendered views, and limits of one view's longer side in pixels.
PIXELS_PER_MM = 1.5
MIN_SIDE, MAX_SIDE = 256, 1200
BACKGROUND = (0.0, 0.0, 0.0)
AMBIENT, DIFFUSE = 0.35, 0.65
SMOOTHING_ITERATIONS = 30
MAX_VOXELS = 1 << 25  # above this, render a subsampled label image


def label_colour(key: int) -> tuple[int, int, int]:
    """RGB (0..255) the label table gives label ``key``."""
    return _PALETTE[int(key) % len(_PALETTE)]


def _vtk():
    try:
        from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
        import vtkmodules.vtkFiltersCore as core
        import vtkmodules.vtkFiltersGeneral as general
        import vtkmodules.vtkRenderingCore as rendering
        import vtkmodules.vtkRenderingOpenGL2 as opengl
        import vtkmodules.vtkCommonCore as common
        import vtkmodules.vtkCommonDataModel as datamodel
        import vtkmodules.vtkIOImage as io_image
    except ImportError:
        raise UserError('--preview needs VTK: pip install "totalseg[preview]"') from None
    # Errors and warnings of VTK go to its own logger on stderr; we report failures ourselves.
    common.vtkObject.GlobalWarningDisplayOff()
    return dict(numpy_to_vtk=numpy_to_vtk, vtk_to_numpy=vtk_to_numpy, core=core, general=general,
                rendering=rendering, opengl=opengl, common=common, datamodel=datamodel, io_image=io_image)


def _surface(v, labels: np.ndarray, spacing: np.ndarray, present: list[int]):
    """Smoothed surfaces of all ``present`` labels, point scalars = label id."""
    padded = np.pad(labels, 1)  # closes surfaces of masks that reach the border
    image = v["datamodel"].vtkImageData()
    image.SetDimensions(*padded.shape)
    image.SetSpacing(*spacing)
    scalars = v["numpy_to_vtk"](padded.ravel(order="F"), deep=True)
    image.GetPointData().SetScalars(scalars)
    contour = v["general"].vtkDiscreteFlyingEdges3D()
    contour.SetInputData(image)
    for i, key in enumerate(present):
        contour.SetValue(i, key)
    contour.ComputeScalarsOn()
    smooth = v["core"].vtkWindowedSincPolyDataFilter()
    smooth.SetInputConnection(contour.GetOutputPort())
    smooth.SetNumberOfIterations(SMOOTHING_ITERATIONS)
    smooth.SetPassBand(0.01)
    smooth.BoundarySmoothingOff()
    smooth.FeatureEdgeSmoothingOff()
    smooth.NonManifoldSmoothingOn()
    smooth.NormalizeCoordinatesOn()
    normals = v["core"].vtkPolyDataNormals()
    normals.SetInputConnection(smooth.GetOutputPort())
    normals.SplittingOff()
    normals.Update()
    return normals.GetOutput()


def _render_window(v, width: int, height: int):
    """An offscreen render window: X when a display is there, else EGL."""
    opengl = v["opengl"]
    window = None
    if not os.environ.get("DISPLAY") and hasattr(opengl, "vtkEGLRenderWindow"):
        window = opengl.vtkEGLRenderWindow()
    if window is None:
        window = v["rendering"].vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(width, height)
    window.SetMultiSamples(0)  # exact class colours at the edges (no blending with the background)
    if not window.SupportsOpenGL():
        raise UserError("--preview cannot render: no OpenGL here (install Mesa's EGL, e.g. the Debian "
                        "packages libegl1 and libegl-mesa0, or run with a display); run without -p")
    return window


def _view(v, polydata, lut, bounds, axis: str, px_per_mm: float) -> np.ndarray:
    """RGB array (rows top to bottom) of one parallel-projection view; ``axis`` "front" or "side"."""
    x0, x1, y0, y1, z0, z1 = bounds
    width_mm = (x1 - x0) if axis == "front" else (y1 - y0)
    height_mm = z1 - z0
    width = max(int(round(width_mm * px_per_mm)), 16)
    height = max(int(round(height_mm * px_per_mm)), 16)
    mapper = v["rendering"].vtkPolyDataMapper()
    mapper.SetInputData(polydata)
    mapper.SetLookupTable(lut)
    mapper.SetScalarRange(0, lut.GetNumberOfTableValues() - 1)
    mapper.SetScalarModeToUsePointData()
    mapper.ScalarVisibilityOn()
    mapper.InterpolateScalarsBeforeMappingOff()
    actor = v["rendering"].vtkActor()
    actor.SetMapper(mapper)
    prop = actor.GetProperty()
    prop.SetAmbient(AMBIENT)
    prop.SetDiffuse(DIFFUSE)
    prop.SetSpecular(0.0)
    prop.SetInterpolationToGouraud()
    renderer = v["rendering"].vtkRenderer()
    renderer.AddActor(actor)
    renderer.SetBackground(*BACKGROUND)
    centre = ((x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2)
    camera = renderer.GetActiveCamera()
    camera.ParallelProjectionOn()
    camera.SetFocalPoint(*centre)
    distance = 2 * max(x1 - x0, y1 - y0, z1 - z0) + 10
    if axis == "front":  # from anterior (+y in RAS), head up
        camera.SetPosition(centre[0], centre[1] + distance, centre[2])
    else:  # from the patient's right (+x in RAS)
        camera.SetPosition(centre[0] + distance, centre[1], centre[2])
    camera.SetViewUp(0, 0, 1)
    camera.SetParallelScale(height_mm / 2 * 1.04)
    renderer.ResetCameraClippingRange()
    # a headlight: the side facing the viewer is lit, so shades stay close to the class colour
    renderer.LightFollowCameraOn()
    window = _render_window(v, width, height)
    window.AddRenderer(renderer)
    window.Render()
    grab = v["rendering"].vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    out = grab.GetOutput()
    w, h, _ = out.GetDimensions()
    rgb = v["vtk_to_numpy"](out.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3].copy()
    window.Finalize()
    return rgb


def render_preview(labels: np.ndarray, affine: np.ndarray, class_map: Mapping[int, str]) -> np.ndarray:
    """RGB uint8 picture: front view and side view of the classes of ``class_map`` side by side.

    ``labels`` is a label image on the grid of ``affine`` (voxel → world, any orientation).
    """
    v = _vtk()
    data, spacing = ras_array(np.asarray(labels), np.asarray(affine, dtype=float))
    # Very large label images are thinned out (nearest voxel): a picture ~1000 px wide gains nothing
    # from sub-millimetre surfaces, and the surface extraction time and memory grow with the voxels.
    step = int(np.ceil((data.size / MAX_VOXELS) ** (1 / 3))) if data.size > MAX_VOXELS else 1
    if step > 1:
        data, spacing = np.ascontiguousarray(data[::step, ::step, ::step]), spacing * step
    present = [int(k) for k in sorted(class_map) if int(k) > 0]
    found = set(np.unique(data).tolist())
    present = [k for k in present if k in found]
    extent_mm = np.array(data.shape) * spacing
    px = PIXELS_PER_MM
    longest = max(extent_mm[0] + extent_mm[1], extent_mm[2]) * px
    px *= min(max(MIN_SIDE / max(longest, 1e-6), 1.0), MAX_SIDE / max(longest, 1e-6))
    bounds = (0.0, (data.shape[0] + 1) * spacing[0], 0.0, (data.shape[1] + 1) * spacing[1],
              0.0, (data.shape[2] + 1) * spacing[2])
    if not present:
        h = max(int(round(extent_mm[2] * px)), 16)
        return np.zeros((h, max(int(round((extent_mm[0] + extent_mm[1]) * px)), 32), 3), dtype=np.uint8)
    polydata = _surface(v, np.where(np.isin(data, present), data, 0).astype(np.uint16), spacing, present)
    lut = v["common"].vtkLookupTable()
    top = max(present)
    lut.SetNumberOfTableValues(top + 1)
    lut.SetTableRange(0, top)
    for key in range(top + 1):
        r, g, b = label_colour(key)
        lut.SetTableValue(key, r / 255, g / 255, b / 255, 1.0)
    lut.Build()
    front = _view(v, polydata, lut, bounds, "front", px)
    side = _view(v, polydata, lut, bounds, "side", px)
    height = max(front.shape[0], side.shape[0])
    gap = np.zeros((height, 4, 3), dtype=np.uint8)
    pad = lambda a: np.pad(a, ((0, height - a.shape[0]), (0, 0), (0, 0)))  # noqa: E731
    return np.concatenate([pad(front), gap, pad(side)], axis=1)


def write_png(rgb: np.ndarray, path: str | os.PathLike) -> None:
    """Write an RGB uint8 array as PNG, atomically (temporary name in the folder, then rename)."""
    v = _vtk()
    target = Path(path)
    h, w, _ = rgb.shape
    image = v["datamodel"].vtkImageData()
    image.SetDimensions(w, h, 1)
    flat = np.ascontiguousarray(rgb[::-1]).reshape(-1, 3)  # VTK images start at the bottom row
    image.GetPointData().SetScalars(v["numpy_to_vtk"](flat, deep=True))
    def write(tmp: Path) -> None:
        writer = v["io_image"].vtkPNGWriter()
        writer.SetFileName(str(tmp))
        writer.SetInputData(image)
        writer.Write()
        if writer.GetErrorCode() or not tmp.exists():
            raise UserError(f"cannot write {target}; check the folder and free disk space")

    write_atomic(target, write)


def write_preview(labels: np.ndarray, affine: np.ndarray, class_map: Mapping[int, str],
                  path: str | os.PathLike) -> Path:
    """Render :func:`render_preview` and save it as PNG at ``path`` (e.g. ``preview_total.png``)."""
    rgb = render_preview(labels, affine, class_map)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_png(rgb, target)
    return target
