"""Synthetic operando data with known truth: scenario (lattice curves), 1D patterns, 2D frames,
cycler log and complete datasets (`insitu-xrd simulate`). See docs/simulator.md."""

from insitu_xrd.simulate.scenario import ChargeScenario, ScenarioState, nmc811_ocv_V
from insitu_xrd.simulate.pattern1d import CellModel, Simulated1D, TRUE_INSTRUMENT, simulate_pattern_1d

__all__ = [
    "ChargeScenario",
    "ScenarioState",
    "nmc811_ocv_V",
    "CellModel",
    "Simulated1D",
    "TRUE_INSTRUMENT",
    "simulate_pattern_1d",
    "simulate_dataset",
]


def __getattr__(name: str):  # simulate_dataset pulls in pyFAI; import it only when asked for
    if name == "simulate_dataset":
        from insitu_xrd.simulate.dataset import simulate_dataset

        return simulate_dataset
    raise AttributeError(name)
