"""thermanopt: geometry and thermodynamics of deep learning for Pymanopt.

Sub-packages: :mod:`thermanopt.manifolds` (deep-linear-network manifolds),
:mod:`thermanopt.entropy` (Boltzmann entropy, free energy, entropic loss),
:mod:`thermanopt.optimizers` (entropy-aware Riemannian optimizers) and
:mod:`thermanopt.analysis` (symmetries of torch models and their breaking).
"""

__version__ = "0.1.0"
