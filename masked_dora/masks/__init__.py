"""Gate parameterisations, schedules and sparsity controllers for the channel masks."""

from .controller import LagrangianController, kept_count, topk_keep
from .gates import GATES, Gate, GumbelSigmoidGate, HardConcreteGate, SigmoidSTEGate, make_gate
from .schedules import Schedule

__all__ = ["GATES", "Gate", "GumbelSigmoidGate", "HardConcreteGate", "LagrangianController", "Schedule",
           "SigmoidSTEGate", "kept_count", "make_gate", "topk_keep"]
