"""thermanopt.entropy: thermodynamics of deep learning.

- DLN Boltzmann entropy (Menon & Yu, arXiv 2509.09088): :func:`dln_entropy`,
  :func:`entropy_from_singular_values`, :func:`dln_entropy_gradient`,
  :func:`dln_entropy_hvp`, :func:`orthogonal_group_volume`, :func:`log_K`;
- free energy F = E - T S as a Pymanopt problem: :func:`free_energy`;
- entropic loss and entropic forces of GD/SGD (Ziyin, Xu & Chuang, arXiv
  2505.12387): :func:`entropic_loss`, :func:`entropic_force`,
  :func:`conserved_quantity_step`, :class:`EntropicLoss`.
"""

from .dln import (
    RankDeficientError,
    dln_entropy,
    dln_entropy_and_gradient,
    dln_entropy_gradient,
    dln_entropy_hvp,
    entropy_from_singular_values,
    entropy_gradient_from_singular_values,
    log_K,
    log_orthogonal_group_volume,
    orthogonal_group_volume,
)
from .entropic_loss import (
    ChargeStep,
    EntropicLoss,
    adam_preconditioner,
    conserved_quantity,
    conserved_quantity_step,
    entropic_force,
    entropic_loss,
    layer_balance,
    layer_balance_next,
    predicted_next,
)
from .free_energy import free_energy
from .model import EntropyModel

__all__ = [
    "RankDeficientError",
    "dln_entropy",
    "dln_entropy_and_gradient",
    "dln_entropy_gradient",
    "dln_entropy_hvp",
    "entropy_from_singular_values",
    "entropy_gradient_from_singular_values",
    "log_K",
    "log_orthogonal_group_volume",
    "orthogonal_group_volume",
    "free_energy",
    "EntropyModel",
    "ChargeStep",
    "EntropicLoss",
    "adam_preconditioner",
    "conserved_quantity",
    "conserved_quantity_step",
    "entropic_force",
    "entropic_loss",
    "layer_balance",
    "layer_balance_next",
    "predicted_next",
]
