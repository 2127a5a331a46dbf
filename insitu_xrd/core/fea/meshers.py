"""Triangulation backends for convex polygon regions with pre-split, shared boundary nodes.

:func:`triangulate_regions` is the small interface between the geometry (``mesh.py``) and the
mesher: it gets the nodes of every region boundary (each polygon edge already split at <= h, the
split nodes shared by the regions on both sides) and must return triangles that keep those
boundary nodes without adding any on region edges, so neighbouring regions conform.

- ``builtin`` (numpy + scipy + shapely, always available, used by the tests and CI): each convex
  region = its boundary nodes + the points of one global triangular lattice of spacing h lying at
  least h/2 inside it, triangulated by ``scipy.spatial.Delaunay`` (Delaunay of a convex point set
  covers the polygon).
- ``triangle`` (Shewchuk's Triangle through the ``triangle`` package; optional: its licence forbids
  commercial use without permission): one constrained quality triangulation of the whole planar
  straight-line graph, ``Y`` = no Steiner points on the segments.
- ``gmsh`` (optional, GPL-2.0-or-later): the regions as plane surfaces sharing their boundary lines,
  each line one mesh edge (transfinite with 2 nodes), frontal-Delaunay inside.

The optional ones are imported lazily, so neither is a dependency of this BSD package.
"""

from __future__ import annotations

import numpy as np
import shapely
from scipy.spatial import Delaunay
from shapely.geometry import Polygon

from insitu_xrd.errors import InsituXRDError

__all__ = ["available_meshers", "triangulate_regions"]

def available_meshers() -> list[str]:
    """Backends importable here (builtin always)."""
    out = []
    try:
        import gmsh

        gmsh.isInitialized()  # the module imports even when its shared library is missing
        out.append("gmsh")
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        pass
    try:
        import triangle  # noqa: F401

        out.append("triangle")
    except Exception:  # noqa: BLE001
        pass
    return out + ["builtin"]


def _lattice(points: np.ndarray, h: float) -> np.ndarray:
    """Triangular lattice of spacing h covering the bounding box of the points."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    dy = h * np.sqrt(3) / 2
    ys = np.arange(lo[1], hi[1] + dy, dy)
    xs = np.arange(lo[0] - h, hi[0] + h, h)
    X, Y = np.meshgrid(xs, ys)
    X = X + 0.5 * h * (np.arange(len(ys)) % 2)[:, None]
    return np.column_stack([X.ravel(), Y.ravel()])


def _bulged(loop_xy: np.ndarray, h: float, eps: float = 1e-4) -> np.ndarray:
    """The loop with the split nodes of each straight edge pushed out by <= eps*h (parabola).

    Qhull's Delaunay triangulation of exactly collinear boundary nodes can return zero-area
    triangles; on a strictly convex copy it cannot. Only the connectivity is kept: the nodes
    keep their true coordinates.
    """
    prev, nxt = np.roll(loop_xy, 1, axis=0), np.roll(loop_xy, -1, axis=0)
    u, v = loop_xy - prev, nxt - loop_xy
    cross = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
    straight = np.abs(cross) < 1e-9 * np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
    if not straight.any():
        return loop_xy
    ci = np.flatnonzero(~straight)
    idx = np.flatnonzero(straight)
    k = np.searchsorted(ci, idx) - 1  # previous corner (wraps to the last one through -1)
    a, b = loop_xy[ci[k]], loop_xy[ci[(k + 1) % len(ci)]]
    d = b - a
    length = np.linalg.norm(d, axis=1)
    s = np.linalg.norm(loop_xy[idx] - a, axis=1) / length
    normal = np.column_stack([d[:, 1], -d[:, 0]]) / length[:, None]  # outward for a CCW loop
    out = loop_xy.copy()
    out[idx] += (eps * h * 4 * s * (1 - s))[:, None] * normal
    return out


def _tri_builtin(pts: np.ndarray, loops: list[np.ndarray], region: np.ndarray, h: float):
    lattice = _lattice(pts, h)
    all_pts = [pts]
    tris, treg = [], []
    n_total = len(pts)
    for lp, rid in zip(loops, region):  # loop over convex regions (grains, coating sectors)
        poly = Polygon(pts[lp])
        inside = shapely.contains_xy(poly, lattice[:, 0], lattice[:, 1])
        cand = lattice[inside]
        if len(cand):
            far = shapely.distance(poly.exterior, shapely.points(cand)) > 0.5 * h
            cand = cand[far]
        local = np.vstack([_bulged(pts[lp], h), cand])
        ids = np.concatenate([lp, n_total + np.arange(len(cand))])
        n_total += len(cand)
        all_pts.append(cand)
        tri = Delaunay(local).simplices
        cen = local[tri].mean(axis=1)
        keep = shapely.contains_xy(poly, cen[:, 0], cen[:, 1])
        tris.append(ids[tri[keep]])
        treg.append(np.full(keep.sum(), rid))
    return np.vstack(all_pts), np.vstack(tris), np.concatenate(treg)


def _tri_triangle(pts: np.ndarray, loops: list[np.ndarray], region: np.ndarray, h: float):
    import triangle  # optional; Shewchuk's licence forbids commercial use without permission

    seg = np.unique(np.sort(np.column_stack([np.concatenate(loops), np.concatenate([np.roll(lp, -1) for lp in loops])]),
                            axis=1), axis=0)
    reg_pts = np.array([np.asarray(Polygon(pts[lp]).representative_point().coords)[0] for lp in loops])
    regions = np.column_stack([reg_pts, np.arange(len(loops)), np.zeros(len(loops))])
    area = np.sqrt(3) / 4 * h * h
    out = triangle.triangulate({"vertices": pts, "segments": seg, "regions": regions}, f"pq28a{area:.10g}YAQ")
    idx = out["triangle_attributes"].ravel().astype(int)
    return out["vertices"], out["triangles"], region[idx]


def _tri_gmsh(pts: np.ndarray, loops: list[np.ndarray], region: np.ndarray, h: float):
    import gmsh  # optional; GPL-2.0-or-later, so never a hard dependency

    initialized_here = not gmsh.isInitialized()
    if initialized_here:
        gmsh.initialize(readConfigFiles=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.add("insitu_xrd_fea")
        geo = gmsh.model.geo
        ptag = {int(v): geo.addPoint(float(pts[v, 0]), float(pts[v, 1]), 0.0, h)
                for v in np.unique(np.concatenate(loops))}
        ltag: dict[tuple[int, int], int] = {}
        surf_region = {}
        for lp, rid in zip(loops, region):  # loop over regions (the split nodes are the line ends)
            curve = []
            for a, b in zip(lp, np.roll(lp, -1)):
                key = (min(a, b), max(a, b))
                if key not in ltag:
                    ltag[key] = geo.addLine(ptag[key[0]], ptag[key[1]])
                curve.append(ltag[key] if a == key[0] else -ltag[key])
            s = geo.addPlaneSurface([geo.addCurveLoop(curve)])
            surf_region[s] = rid
        geo.synchronize()
        for tag in ltag.values():
            gmsh.model.mesh.setTransfiniteCurve(tag, 2)  # keep the shared split nodes, nothing more
        gmsh.option.setNumber("Mesh.MeshSizeMax", h)
        gmsh.option.setNumber("Mesh.Algorithm", 6)
        gmsh.model.mesh.generate(2)
        ntags, coords, _ = gmsh.model.mesh.getNodes()
        xy = coords.reshape(-1, 3)[:, :2]
        lookup = np.zeros(int(ntags.max()) + 1, int)
        lookup[ntags.astype(int)] = np.arange(len(ntags))
        tris, treg = [], []
        for s, rid in surf_region.items():
            etypes, _, enodes = gmsh.model.mesh.getElements(2, s)
            for et, en in zip(etypes, enodes):
                if et == 2:
                    t = lookup[np.asarray(en, int).reshape(-1, 3)]
                    tris.append(t)
                    treg.append(np.full(len(t), rid))
        return xy, np.vstack(tris), np.concatenate(treg)
    finally:
        gmsh.model.remove()
        if initialized_here:
            gmsh.finalize()


def triangulate_regions(pts: np.ndarray, loops: list[np.ndarray], region: np.ndarray, h: float,
                        mesher: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Conforming triangles of convex polygon regions whose edges are already split at <= h.

    pts (V, 2) um, loops: CCW node-id loops, region (L,) region id per loop, h: mesh size (um).
    Returns (points, triangles, region id per triangle, backend used). The boundary nodes are
    kept as given (no Steiner points on region edges), so shared edges conform.

    Raises:
        InsituXRDError: a backend asked for is not installed.
    """
    if mesher == "auto":
        mesher = "gmsh" if "gmsh" in available_meshers() else "builtin"
    if mesher in ("gmsh", "triangle") and mesher not in available_meshers():
        raise InsituXRDError(f"mesher {mesher!r} is not installed (optional: pip install {mesher}); "
                             "use mesher='builtin' or 'auto'")
    fn = {"builtin": _tri_builtin, "triangle": _tri_triangle, "gmsh": _tri_gmsh}[mesher]
    p, t, r = fn(pts, loops, np.asarray(region), h)
    return np.asarray(p, float), np.asarray(t, int), np.asarray(r, int), mesher
