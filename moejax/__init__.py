"""moejax: consistent learning of mixture-of-experts regression in JAX."""

from moejax.baselines import FitInfo, joint_em, joint_gd, random_init, refine
from moejax.gating import GatingInfo, fit_gating
from moejax.metrics import expert_error, gating_error, match_experts
from moejax.model import (MoEParams, log_likelihood, posteriors, predict, random_params,
                          sample)
from moejax.nonlinearities import (NONLINEARITIES, TransformConstants, get_nonlinearity,
                                   transform_constants)
from moejax._validate import min_samples
from moejax.recover import ExpertEstimate, recover, recover_experts

__version__ = "0.1.0"

__all__ = [
    "ExpertEstimate",
    "FitInfo",
    "GatingInfo",
    "MoEParams",
    "NONLINEARITIES",
    "TransformConstants",
    "expert_error",
    "fit_gating",
    "gating_error",
    "get_nonlinearity",
    "joint_em",
    "joint_gd",
    "log_likelihood",
    "match_experts",
    "min_samples",
    "posteriors",
    "predict",
    "random_init",
    "random_params",
    "recover",
    "recover_experts",
    "refine",
    "sample",
    "transform_constants",
]
