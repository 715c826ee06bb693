"""lticl — linear transformers as versatile in-context learners.

A reference implementation of Vladymyrov, von Oswald, Sandler & Ge (NeurIPS 2024).
Notation and conventions are in docs/math.md: tokens e_i = (x_i, y_i), layers
e ← e + Σ_k P_k G Q_k e, prediction ŷ = −y_query; G = [[Σ, α], [αᵀ, λ]].
"""

from . import baselines, inspection, metrics, paper, theorems, theory
from .algorithm import algorithm
from .inspection import inspect_model, momentum_terms
from .io import load_npz, save_npz
from .metrics import Evaluation, adjusted_loss, evaluate, per_layer_profile, per_variance_profile, sequence_loss
from .inits import gd_init, init_params, precondition_init
from .model import FORMS, ImplicitState, implicit_state, predict, weights
from .params import Params, VARIANTS, full_matrices, omegas, truncate
from .noise import Categorical, Custom, Fixed, NoiseDistribution, Uniform, as_noise, parse_noise
from .tasks import Tasks, sample_tasks, task_chunks
from .theory import best_one_layer_loss

__version__ = "0.1.0"

__all__ = [
    "FORMS",
    "VARIANTS",
    "Categorical",
    "Custom",
    "Evaluation",
    "Fixed",
    "ImplicitState",
    "NoiseDistribution",
    "Params",
    "Tasks",
    "Uniform",
    "adjusted_loss",
    "algorithm",
    "as_noise",
    "baselines",
    "best_one_layer_loss",
    "evaluate",
    "full_matrices",
    "gd_init",
    "implicit_state",
    "init_params",
    "inspect_model",
    "inspection",
    "load_npz",
    "metrics",
    "momentum_terms",
    "omegas",
    "paper",
    "parse_noise",
    "per_layer_profile",
    "per_variance_profile",
    "precondition_init",
    "predict",
    "sample_tasks",
    "save_npz",
    "sequence_loss",
    "task_chunks",
    "theorems",
    "theory",
    "truncate",
    "weights",
]
