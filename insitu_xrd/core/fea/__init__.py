"""Chemo-mechanical FEA of a polycrystalline NMC secondary particle (see docs/fea.md).

Public API: :class:`StrainCurve`, :class:`FEAParams` (and its groups), :func:`run_fea`,
:func:`build_mesh`. Modules: params (inputs), mesh (Voronoi grains, meshers, node doubling),
diffusion (Fick, scikit-fem), surface (outer-surface condition, steps of equal Li removal),
transport (diffusivities and surface rates of a mesh; :func:`run_transport`, the Li transport
alone), elasticity (eigenstrain elasticity, scikit-fem), cohesive (interface elements, damage law,
secant solver), model (the staggered time loop, studies).
"""

from insitu_xrd.core.fea.mesh import FEAMesh, available_meshers, build_mesh
from insitu_xrd.core.fea.model import bare_vs_coated_study, mesh_convergence_study, run_fea
from insitu_xrd.core.fea.params import (
    CohesiveParams,
    ElasticParams,
    FEAParams,
    GeometryParams,
    StrainCurve,
    TimeParams,
    TransportParams,
)
from insitu_xrd.core.fea.transport import run_transport

__all__ = [
    "StrainCurve",
    "FEAParams",
    "GeometryParams",
    "TransportParams",
    "ElasticParams",
    "CohesiveParams",
    "TimeParams",
    "run_fea",
    "run_transport",
    "build_mesh",
    "FEAMesh",
    "available_meshers",
    "mesh_convergence_study",
    "bare_vs_coated_study",
]
