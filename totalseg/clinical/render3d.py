"""Rotating 3-D pictures of masks (VTK, offscreen): smoothed surfaces seen from the patient's front.

Frames turn about the body's long axis by a fixed step; the background is black. VTK renders without
a display through its EGL window (Mesa's software EGL on machines without a GPU).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def _vtk():
    try:
        import vtkmodules.vtkCommonCore as common
        import vtkmodules.vtkCommonDataModel as datamodel
        import vtkmodules.vtkFiltersCore as core
        import vtkmodules.vtkRenderingCore as rendering
        import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the render window)
        from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
    except ImportError:
        from totalseg.errors import UserError

        raise UserError('the report pictures need VTK: pip install "totalseg[preview]"') from None
    common.vtkObject.GlobalWarningDisplayOff()
    return common, datamodel, core, rendering, numpy_to_vtk, vtk_to_numpy


def _surface(mask: np.ndarray, spacing, smoothing: int):
    """A smoothed surface of a binary mask (world mm from the grid's corner), or None when empty."""
    common, datamodel, core, _, numpy_to_vtk, _ = _vtk()
    if not np.any(mask):
        return None
    padded = np.pad((mask > 0).astype(np.uint8), 1)
    image = datamodel.vtkImageData()
    image.SetDimensions(*padded.shape)
    image.SetSpacing(*[float(s) for s in spacing])
    image.GetPointData().SetScalars(numpy_to_vtk(padded.ravel(order="F"), deep=True))
    edges = core.vtkFlyingEdges3D()
    edges.SetInputData(image)
    edges.SetValue(0, 0.5)
    edges.Update()
    if not smoothing:
        return edges.GetOutput()
    smooth = core.vtkWindowedSincPolyDataFilter()
    smooth.SetInputConnection(edges.GetOutputPort())
    smooth.SetNumberOfIterations(min(int(smoothing), 60))
    smooth.SetPassBand(0.01)
    smooth.NormalizeCoordinatesOn()
    smooth.Update()
    return smooth.GetOutput()


def _scene(layers: Sequence[tuple], spacing, smoothing: int):
    """A renderer holding one surface actor per non-empty layer (mask, rgb, opacity[, smoothing])."""
    _, _, _, rendering, _, _ = _vtk()
    renderer = rendering.vtkRenderer()
    renderer.SetBackground(0, 0, 0)
    for layer in layers:
        poly = _surface(layer[0], spacing, layer[3] if len(layer) > 3 else smoothing)
        if poly is None:
            continue
        mapper = rendering.vtkPolyDataMapper()
        mapper.SetInputData(poly)
        mapper.ScalarVisibilityOff()
        actor = rendering.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*layer[1])
        actor.GetProperty().SetOpacity(layer[2])
        renderer.AddActor(actor)
    return renderer


def rotating_views(layers: Sequence[tuple], spacing, size=(400, 520), frames: int = 24,
                   step_deg: float = 18.0, smoothing: int = 30, stride: int = 2) -> list[np.ndarray]:
    """``frames`` RGB pictures (rows x columns x 3) of ``layers`` = (mask, rgb 0..1, opacity[, smoothing]),
    from the patient's left, turned ``step_deg`` further about the long axis each frame. Masks are
    thinned to every ``stride``-th voxel first (a picture needs no sub-millimetre surfaces; 8x faster)."""
    _, _, _, rendering, _, vtk_to_numpy = _vtk()
    spacing = [float(s) * stride for s in spacing]
    layers = [(ndimage.maximum_filter(layer[0] > 0, size=stride)[::stride, ::stride, ::stride], *layer[1:])
              for layer in layers]
    renderer = _scene(layers, spacing, smoothing)
    window = rendering.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    camera = renderer.GetActiveCamera()
    center = [s * n / 2 for s, n in zip(spacing, layers[0][0].shape)]
    camera.SetFocalPoint(*center)
    camera.SetPosition(center[0] - 1000, center[1], center[2])  # RAS grid: from the patient's left
    camera.SetViewUp(0, 0, 1)
    renderer.ResetCamera()
    camera.Zoom(1.25)
    grab = rendering.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    pictures = []
    for _ in range(frames):
        window.Render()
        grab.Modified()
        grab.Update()
        out = grab.GetOutput()
        w, h, _ = out.GetDimensions()
        rgb = vtk_to_numpy(out.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]
        pictures.append(np.ascontiguousarray(rgb))
        camera.Azimuth(step_deg)
    window.Finalize()
    return pictures
