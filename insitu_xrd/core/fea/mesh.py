"""Mesh of a quarter secondary particle made of Voronoi grains, with doubled grain-boundary nodes.

Steps (all deterministic for a given :class:`GeometryParams`):

1. Seeds: ``n_grains`` points uniform in the quarter disc (numpy Generator seeded with
   ``seed``), optionally moved by Lloyd steps to the centroids of their clipped cells. The seeds
   are mirrored across x = 0 and y = 0, so the symmetry cuts are exact cell faces, and surrounded by
   far points (radius 4R) that bound every cell without reaching into the disc
   (``scipy.spatial.Voronoi``).
2. The outer arc is a polygon whose vertices lie on the exact circle at every angle where a
   Voronoi ridge crosses the circle, plus evenly spaced vertices (spacing <= mesh size) between
   them; each cell is clipped to it with shapely (convex cell ∩ convex polygon = convex).
   With a coating, the ring R < r < R + t is cut into convex sectors at the same angles.
   Facets shorter than 0.3 h are collapsed where every polygon touching them stays strictly
   convex (:func:`_collapse_short_edges`): random Voronoi diagrams have many tiny facets, which
   would otherwise give needle triangles.
3. Every polygon edge is split at the mesh size; the split nodes are shared by the two regions
   on either side, so the triangulations of neighbouring regions conform.
4. Triangulation behind a small interface (``meshers.triangulate_regions``): ``builtin``
   (numpy + scipy + shapely, always available, used by the tests), ``triangle`` (optional,
   non-commercial licence) or ``gmsh`` (optional, GPL), the optional ones imported lazily.
5. Node doubling: every node gets one copy per region (grain or coating) touching it; edges
   shared by two regions become interface pairs (two copies per end). The mesh is checked:
   every edge is used by one or two triangles, edges used once lie on the outer boundary or on a
   symmetry cut, all triangles are counter-clockwise with positive area; the smallest angle is
   reported.

Units: um for coordinates and lengths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import Voronoi, cKDTree
from shapely.geometry import Polygon

from insitu_xrd.core.fea.meshers import available_meshers, triangulate_regions
from insitu_xrd.core.fea.params import GeometryParams

__all__ = ["FEAMesh", "build_mesh", "triangulate_regions", "available_meshers", "COATING_ID"]

#: region id of the coating in ``cell_grain`` and ``interface_grains``
COATING_ID = -1


@dataclass(frozen=True)
class FEAMesh:
    """Triangle mesh with doubled grain-boundary nodes (coordinates in um).

    nodes_um (N, 2), triangles (M, 3) counter-clockwise node ids, cell_grain (M,) grain id per
    triangle (coating: -1). node_base (N,): the undoubled node of each node; base_nodes_um (Nb, 2)
    and base_triangles (M, 3): the same mesh without doubling (Li diffusion runs on it: the
    concentration is continuous across grain boundaries).
    interface_nodes (K, 4): [a1, a2, b1, b2] node ids of each interface pair (copies on side A
    and side B of the edge from end 1 to end 2); interface_grains (K, 2): [A, B] region ids,
    A < B (coating -1 first); interface_normal (K, 2): unit normal pointing from A into B;
    interface_length_um (K,).
    outer_edges (E, 2): base node ids of the edges on the outer surface; outer_edge_grain (E,):
    the grain whose surface rate applies to each (for a coating: the grain beneath it).
    sym_x_nodes / sym_y_nodes: node ids (all copies) on x = 0 / y = 0.
    """

    nodes_um: np.ndarray
    triangles: np.ndarray
    cell_grain: np.ndarray
    node_base: np.ndarray
    base_nodes_um: np.ndarray
    base_triangles: np.ndarray
    interface_nodes: np.ndarray
    interface_grains: np.ndarray
    interface_normal: np.ndarray
    interface_length_um: np.ndarray
    outer_edges: np.ndarray
    outer_edge_grain: np.ndarray
    sym_x_nodes: np.ndarray
    sym_y_nodes: np.ndarray
    n_grains: int
    radius_um: float
    coating_um: float
    grain_seeds_um: np.ndarray
    mesher: str
    min_angle_deg: float
    stats: dict = field(default_factory=dict)

    @property
    def n_nodes(self) -> int:
        return int(self.nodes_um.shape[0])

    @property
    def n_cells(self) -> int:
        return int(self.triangles.shape[0])

    @property
    def is_grain_boundary(self) -> np.ndarray:
        """(K,) True for grain-grain interfaces (False: grain-coating, kept bonded)."""
        return self.interface_grains[:, 0] >= 0

    @property
    def grain_on_surface(self) -> np.ndarray:
        """(n_grains,) True for grains that carry a surface rate."""
        out = np.zeros(self.n_grains, bool)
        out[self.outer_edge_grain] = True
        return out

    @property
    def outer_radius_um(self) -> float:
        return self.radius_um + self.coating_um


# ---------------------------------------------------------------------------------------------
# seeds and Voronoi cells


def _mirrored_voronoi(seeds: np.ndarray, radius: float) -> Voronoi:
    """Voronoi diagram of the seeds, their mirror images across both axes and a far ring."""
    mx = seeds * np.array([-1.0, 1.0])
    my = seeds * np.array([1.0, -1.0])
    far_phi = np.linspace(0.0, 2 * np.pi, 16, endpoint=False)
    far = 4.0 * radius * np.column_stack([np.cos(far_phi), np.sin(far_phi)])
    return Voronoi(np.vstack([seeds, mx, my, -seeds, far]))


def _cell_polygons(vor: Voronoi, n: int, domain: Polygon) -> list[Polygon]:
    """The first n Voronoi cells clipped to the domain (convex hull of the cell vertices: exact)."""
    cells = []
    for i in range(n):  # loop over grains (not elements)
        region = vor.regions[vor.point_region[i]]
        if -1 in region or len(region) < 3:
            raise RuntimeError("unbounded Voronoi cell for a seed inside the particle (far ring too close)")
        poly = shapely.convex_hull(shapely.MultiPoint(vor.vertices[region]))
        cells.append(shapely.intersection(poly, domain))
    return cells


def _quarter_disc(radius: float, angles: np.ndarray) -> Polygon:
    arc = radius * np.column_stack([np.cos(angles), np.sin(angles)])
    return Polygon(np.vstack([[0.0, 0.0], arc]))


def _even_angles(radius: float, h: float, breaks: np.ndarray) -> np.ndarray:
    """Angles from 0 to pi/2 through every break, evenly spaced with arc step <= h in between."""
    b = np.unique(np.concatenate([[0.0, np.pi / 2], breaks]))
    pieces = [np.linspace(b[i], b[i + 1], max(1, math.ceil((b[i + 1] - b[i]) * radius / h - 1e-9)) + 1)[:-1]
              for i in range(b.size - 1)]  # loop over arc intervals (a few tens)
    return np.concatenate(pieces + [[np.pi / 2]])


def _seeds(g: GeometryParams) -> np.ndarray:
    """Grain seeds (um): uniform in the quarter disc, then Lloyd steps."""
    rng = np.random.default_rng(g.seed)
    u = rng.random((g.n_grains, 2))
    r = g.radius_um * np.sqrt(u[:, 0])
    phi = 0.5 * np.pi * u[:, 1]
    seeds = np.column_stack([r * np.cos(phi), r * np.sin(phi)])
    fine = _quarter_disc(g.radius_um, np.linspace(0.0, np.pi / 2, 257))
    for _ in range(g.lloyd_iterations):
        cells = _cell_polygons(_mirrored_voronoi(seeds, g.radius_um), g.n_grains, fine)
        seeds = np.array([[c.centroid.x, c.centroid.y] for c in cells])
    return seeds


def _circle_crossings(vor: Voronoi, n: int, radius: float) -> np.ndarray:
    """Angles in (0, pi/2) where finite ridges of the first n cells cross the circle."""
    rv = np.array([rv for rv, rp in zip(vor.ridge_vertices, vor.ridge_points) if -1 not in rv and min(rp) < n])
    if rv.size == 0:
        return np.empty(0)
    p, q = vor.vertices[rv[:, 0]], vor.vertices[rv[:, 1]]
    d = q - p
    a = np.einsum("ij,ij->i", d, d)
    b = 2 * np.einsum("ij,ij->i", p, d)
    c = np.einsum("ij,ij->i", p, p) - radius**2
    disc = b * b - 4 * a * c
    ok = (disc > 0) & (a > 0)
    sq = np.sqrt(np.where(ok, disc, 0.0))
    out = []
    for sgn in (-1.0, 1.0):
        s = (-b + sgn * sq) / (2 * np.where(a > 0, a, 1.0))
        hit = ok & (s >= 0) & (s <= 1)
        pts = p[hit] + s[hit, None] * d[hit]
        out.append(np.arctan2(pts[:, 1], pts[:, 0]))
    ang = np.concatenate(out)
    eps = 1e-9
    return np.sort(ang[(ang > eps) & (ang < np.pi / 2 - eps)])


# ---------------------------------------------------------------------------------------------
# polygon regions -> shared vertex table


def _regions(g: GeometryParams, short_edge_fraction: float = 0.3) -> tuple:
    """Vertex table, convex region loops (vertex ids, CCW), region ids, seeds, and the angles and
    coordinates of the vertices on the grains' outer polygon (sorted by angle)."""
    R, h, t = g.radius_um, g.mesh_size_um, g.coating_um
    seeds = _seeds(g)
    vor = _mirrored_voronoi(seeds, R)
    angles = _even_angles(R, h, _circle_crossings(vor, g.n_grains, R))
    domain = _quarter_disc(R, angles)
    cells = _cell_polygons(vor, g.n_grains, domain)
    loops_xy, region = [], []
    for gid, c in enumerate(cells):  # loop over grains
        if c.is_empty or c.area <= 0:
            raise RuntimeError(f"grain {gid} has an empty cell")
        c = shapely.geometry.polygon.orient(c if c.geom_type == "Polygon" else max(c.geoms, key=lambda q: q.area))
        loops_xy.append(np.asarray(c.exterior.coords)[:-1])
        region.append(gid)
    # shared vertex table: snap to the axes and to the exact arc vertices, merge round-off duplicates
    pts = np.vstack(loops_xy)
    tol = 1e-8 * R
    pts[np.abs(pts[:, 0]) < tol, 0] = 0.0
    pts[np.abs(pts[:, 1]) < tol, 1] = 0.0
    arc = R * np.column_stack([np.cos(angles), np.sin(angles)])
    dist, near = cKDTree(arc).query(pts)
    pts[dist < tol] = arc[near[dist < tol]]
    pairs = cKDTree(pts).query_pairs(tol, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(pts),) * 2) if len(pairs) else \
        coo_matrix((len(pts), len(pts)))
    _, label = connected_components(graph, directed=False)
    _, first = np.unique(label, return_index=True)
    verts = pts[first]
    offsets = np.cumsum([0] + [len(lp) for lp in loops_xy])
    loops = []
    for k in range(len(loops_xy)):
        ids = label[offsets[k]:offsets[k + 1]]
        keep = ids != np.roll(ids, 1)
        loops.append(ids[keep])
    fixed = (verts[:, 0] == 0) | (verts[:, 1] == 0) | (
        np.abs(shapely.distance(shapely.LineString(arc), shapely.points(verts))) < 1e-6 * R)
    verts, loops = _collapse_short_edges(verts, loops, fixed, short_edge_fraction * h)
    # vertices on the outer arc polygon of the grains (by angle): the inner boundary of a coating
    on_arc = np.abs(shapely.distance(shapely.LineString(arc), shapely.points(verts))) < 1e-6 * R
    on_arc &= ~((verts[:, 0] == 0) & (verts[:, 1] == 0))
    bidx = np.flatnonzero(on_arc)
    bang = np.arctan2(verts[bidx, 1], verts[bidx, 0])
    order = np.argsort(bang)
    bidx, bang = bidx[order], bang[order]
    bxy = verts[bidx].copy()
    if t > 0:
        ro = R + t
        outer = ro * np.column_stack([np.cos(bang), np.sin(bang)])
        oid = len(verts) + np.arange(len(bidx))
        verts = np.vstack([verts, outer])
        for k in range(len(bidx) - 1):  # loop over arc sectors of the coating ring
            loops.append(np.array([bidx[k], oid[k], oid[k + 1], bidx[k + 1]]))
            region.append(COATING_ID)
    return verts, loops, np.array(region), seeds, bang, bxy


def _convex(xy: np.ndarray) -> bool:
    """Strictly convex, counter-clockwise polygon (no reflex or flat corner)."""
    if len(xy) < 3:
        return False
    u = np.roll(xy, -1, axis=0) - xy
    v = np.roll(u, -1, axis=0)
    cross = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
    return bool(np.all(cross > 1e-9 * np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)))


def _collapse_short_edges(verts: np.ndarray, loops: list[np.ndarray], fixed: np.ndarray,
                          min_length: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Merge the two ends of grain-boundary facets shorter than min_length (quality of the mesh).

    Random Voronoi diagrams have facets much shorter than the mesh size; meshing them as they are
    gives needle triangles. An interior facet shrinks to its midpoint, a facet with one end on the
    outer arc or a symmetry cut shrinks onto that end (the domain is unchanged); facets with both
    ends fixed are kept. A merge is kept only if every polygon touching it stays strictly convex,
    so the regions remain convex and conforming; the grain boundaries move by < min_length / 2.
    Greedy, shortest facet first (loop over the few short facets, not over elements).
    """
    verts = verts.copy()
    loops = [lp.copy() for lp in loops]
    a = np.concatenate(loops)
    b = np.concatenate([np.roll(lp, -1) for lp in loops])
    key = np.unique(np.sort(np.column_stack([a, b]), axis=1), axis=0)
    length = np.linalg.norm(verts[key[:, 1]] - verts[key[:, 0]], axis=1)
    order = np.argsort(length, kind="stable")
    short = key[order[length[order] < min_length]]
    if short.size == 0:
        return verts, loops
    loops_of: dict[int, set[int]] = {}
    for k, lp in enumerate(loops):  # loop over regions
        for v in lp:
            loops_of.setdefault(int(v), set()).add(k)
    alive = np.ones(len(verts), bool)
    for i, j in short:  # loop over short facets (tens)
        i, j = int(i), int(j)
        if not (alive[i] and alive[j]) or (fixed[i] and fixed[j]):
            continue
        if fixed[j]:
            i, j = j, i  # keep the fixed end
        new_xy = verts[i] if fixed[i] else 0.5 * (verts[i] + verts[j])
        touched = loops_of[i] | loops_of[j]
        trial = {}
        ok = True
        for k in touched:
            lp = np.where(loops[k] == j, i, loops[k])
            lp = lp[lp != np.roll(lp, 1)]
            xy = verts[lp].copy()
            xy[lp == i] = new_xy
            if not _convex(xy):
                ok = False
                break
            trial[k] = lp
        if not ok:
            continue
        verts[i] = new_xy
        for k, lp in trial.items():
            loops[k] = lp
        loops_of[i] = touched
        alive[j] = False
    # drop the merged vertices and renumber
    new_id = np.cumsum(alive) - 1
    return verts[alive], [new_id[lp] for lp in loops]


def _split_edges(verts: np.ndarray, loops: list[np.ndarray], h: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Split every polygon edge into equal pieces <= h; split nodes are shared by both sides."""
    a = np.concatenate(loops)
    b = np.concatenate([np.roll(lp, -1) for lp in loops])
    key = np.sort(np.column_stack([a, b]), axis=1)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.ravel()
    length = np.linalg.norm(verts[uniq[:, 1]] - verts[uniq[:, 0]], axis=1)
    nsub = np.maximum(1, np.ceil(length / h - 1e-9).astype(int))
    n_new = nsub - 1
    start = len(verts) + np.concatenate([[0], np.cumsum(n_new)[:-1]])
    e_of_new = np.repeat(np.arange(len(uniq)), n_new)
    j = np.arange(n_new.sum()) - np.repeat(start - len(verts), n_new) + 1
    s = (j / nsub[e_of_new])[:, None]
    new_pts = (1 - s) * verts[uniq[e_of_new, 0]] + s * verts[uniq[e_of_new, 1]]
    all_pts = np.vstack([verts, new_pts])
    out, pos = [], 0
    for lp in loops:  # loop over regions
        m = len(lp)
        nodes = []
        for k in range(m):
            e = inv[pos + k]
            inner = start[e] + np.arange(n_new[e])
            if lp[k] != uniq[e, 0]:
                inner = inner[::-1]
            nodes.append(np.concatenate([[lp[k]], inner]))
        pos += m
        out.append(np.concatenate(nodes).astype(int))
    return all_pts, out


# ---------------------------------------------------------------------------------------------
# checks and node doubling


def _edges(t: np.ndarray) -> np.ndarray:
    return np.vstack([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])


def _on_line(line: shapely.LineString, xy: np.ndarray, tol: float) -> np.ndarray:
    """(n,) True where the points lie on the polyline (within tol)."""
    return shapely.distance(line, shapely.points(xy)) < tol


def _check_and_orient(p: np.ndarray, t: np.ndarray, r_out: float,
                      outer_line: shapely.LineString) -> tuple[np.ndarray, float]:
    """Counter-clockwise triangles, conformity check, smallest angle (deg)."""
    a, b, c = p[t[:, 0]], p[t[:, 1]], p[t[:, 2]]
    area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    t = np.where((area2 < 0)[:, None], t[:, [0, 2, 1]], t)
    if np.any(np.abs(area2) <= 1e-12 * r_out**2):
        raise RuntimeError("mesher produced a degenerate triangle")
    e = np.sort(_edges(t), axis=1)
    uniq, cnt = np.unique(e, axis=0, return_counts=True)
    if cnt.max() > 2:
        raise RuntimeError("non-conforming mesh: an edge is shared by more than two triangles")
    be = uniq[cnt == 1]
    pa, pb = p[be[:, 0]], p[be[:, 1]]
    tol = 1e-9 * r_out
    on_x = (np.abs(pa[:, 0]) < tol) & (np.abs(pb[:, 0]) < tol)
    on_y = (np.abs(pa[:, 1]) < tol) & (np.abs(pb[:, 1]) < tol)
    on_arc = _on_line(outer_line, pa, tol) & _on_line(outer_line, pb, tol)
    if not np.all(on_x | on_y | on_arc):
        raise RuntimeError(f"non-conforming mesh: {np.sum(~(on_x | on_y | on_arc))} free edges inside the particle")
    v = [p[t[:, (k + 1) % 3]] - p[t[:, k]] for k in range(3)]
    ang = []
    for k in range(3):
        u1, u2 = v[k], -v[(k + 2) % 3]
        cosang = np.einsum("ij,ij->i", u1, u2) / (np.linalg.norm(u1, axis=1) * np.linalg.norm(u2, axis=1))
        ang.append(np.degrees(np.arccos(np.clip(cosang, -1, 1))))
    return t, float(np.min(ang))


def build_mesh(geometry: GeometryParams | None = None) -> FEAMesh:
    """Mesh of the quarter particle for ``geometry`` (default :class:`GeometryParams`).

    Returns an :class:`FEAMesh` (coordinates in um). Deterministic for given parameters.

    Raises:
        InsituXRDError: the requested mesher is not installed.
    """
    g = GeometryParams() if geometry is None else geometry
    h = g.mesh_size_um
    verts, loops, region, seeds, bang, bxy = _regions(g)
    pts, sloops = _split_edges(verts, loops, h)
    p, t, treg, used = triangulate_regions(pts, sloops, region, h, g.mesher)
    # drop points no triangle uses (none for builtin), renumber
    used_nodes, t = np.unique(t, return_inverse=True)
    t = t.reshape(-1, 3)
    p = p[used_nodes]
    r_out = g.radius_um + g.coating_um
    outer_xy = bxy if g.coating_um == 0 else r_out * np.column_stack([np.cos(bang), np.sin(bang)])
    outer_line = shapely.LineString(outer_xy)
    t, min_angle = _check_and_orient(p, t, r_out, outer_line)

    # node doubling: one copy per (node, region)
    nreg = g.n_grains + 2
    key = t * nreg + (treg[:, None] + 1)
    ukey, dinv = np.unique(key.ravel(), return_inverse=True)
    tri_d = dinv.reshape(-1, 3)
    node_base = ukey // nreg
    nodes = p[node_base]

    # interfaces: edges whose two triangles lie in different regions
    e_base = np.sort(_edges(t), axis=1)
    e_reg = np.tile(treg, 3)
    loc = np.vstack([tri_d[:, [0, 1]], tri_d[:, [1, 2]], tri_d[:, [2, 0]]])
    lp = np.vstack([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])
    flip = lp[:, 0] > lp[:, 1]
    loc = np.where(flip[:, None], loc[:, ::-1], loc)  # copies in the order of the sorted base edge
    order = np.lexsort((e_reg, e_base[:, 1], e_base[:, 0]))
    eb, er, el = e_base[order], e_reg[order], loc[order]
    same_next = np.all(eb[1:] == eb[:-1], axis=1)
    i = np.flatnonzero(same_next & (er[1:] != er[:-1]))
    ia, ib = i, i + 1  # sorted by region: A < B
    inodes = np.column_stack([el[ia], el[ib]])
    igr = np.column_stack([er[ia], er[ib]])
    pa, pb = p[eb[ia, 0]], p[eb[ia, 1]]
    tang = pb - pa
    length = np.linalg.norm(tang, axis=1)
    tang /= length[:, None]
    normal = np.column_stack([-tang[:, 1], tang[:, 0]])
    # orient the normal away from side A (towards the centroid of B's triangle)
    tri_of_edge = np.tile(np.arange(len(t)), 3)[order]
    cen_b = p[t[tri_of_edge[ib]]].mean(axis=1)
    s = np.sign(np.einsum("ij,ij->i", cen_b - pa, normal))
    normal *= s[:, None]

    # outer surface edges and their grain (by angle, through the grain/boundary vertex angles)
    cnt_key, cnt = np.unique(e_base, axis=0, return_counts=True)
    be = cnt_key[cnt == 1]
    tol = 1e-9 * r_out
    outer = be[_on_line(outer_line, p[be[:, 0]], tol) & _on_line(outer_line, p[be[:, 1]], tol)]
    mid = 0.5 * (p[outer[:, 0]] + p[outer[:, 1]])
    mid_ang = np.arctan2(mid[:, 1], mid[:, 0])
    # the grain beneath each outer edge: a probe just inside the grains' outer polygon on the ray
    # through the edge midpoint (bare: the edge's own triangle; coated: the grain under the coating)
    k = np.clip(np.searchsorted(bang, mid_ang) - 1, 0, len(bang) - 2)
    P, Q = bxy[k], bxy[k + 1]
    dirn = np.column_stack([np.cos(mid_ang), np.sin(mid_ang)])
    d = Q - P
    lam = (d[:, 0] * P[:, 1] - d[:, 1] * P[:, 0]) / (d[:, 0] * dirn[:, 1] - d[:, 1] * dirn[:, 0])
    probe = (1.0 - 1e-6) * lam[:, None] * dirn
    gmask = treg >= 0
    gt = t[gmask]
    owner = _locate(p, gt, probe)
    if np.any(owner < 0):
        raise RuntimeError("outer surface edge without a grain beneath it")
    outer_grain = treg[gmask][owner]
    tol = 1e-9 * r_out
    sym_x = np.flatnonzero(np.abs(nodes[:, 0]) < tol)
    sym_y = np.flatnonzero(np.abs(nodes[:, 1]) < tol)
    stats = {"n_base_nodes": int(len(p)), "n_interfaces": int(len(inodes)), "arc_vertices": int(len(bang))}
    return FEAMesh(nodes, tri_d, treg, node_base, p, t, inodes.astype(int), igr.astype(int), normal, length,
                   outer, outer_grain.astype(int), sym_x, sym_y, g.n_grains, g.radius_um, g.coating_um, seeds, used,
                   min_angle, stats)


def _locate(p: np.ndarray, t: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Index of the triangle of (p, t) containing each query point (-1 if none); vectorised."""
    cen = p[t].mean(axis=1)
    tree = cKDTree(cen)
    k = min(12, len(t))
    _, cand = tree.query(q, k=k)
    cand = cand.reshape(len(q), k)
    a, b, c = p[t[cand, 0]], p[t[cand, 1]], p[t[cand, 2]]
    qq = q[:, None, :]

    def cross(u, v, w):
        return (v[..., 0] - u[..., 0]) * (w[..., 1] - u[..., 1]) - (v[..., 1] - u[..., 1]) * (w[..., 0] - u[..., 0])

    d1, d2, d3 = cross(a, b, qq), cross(b, c, qq), cross(c, a, qq)
    eps = -1e-12
    inside = ((d1 >= eps) & (d2 >= eps) & (d3 >= eps)) | ((d1 <= -eps) & (d2 <= -eps) & (d3 <= -eps))
    has = inside.any(axis=1)
    first = np.argmax(inside, axis=1)
    return np.where(has, cand[np.arange(len(q)), first], -1)
