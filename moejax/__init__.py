"""moejax: consistent learning of mixture-of-experts regression in JAX."""

from moejax.gating import GatingInfo, fit_gating
from moejax.metrics import expert_error, gating_error, match_experts
from moejax.model import (MoEParams, log_likelihood, posteriors, predict, random_params,
                          sample)
from moejax.nonlinearities import (NONLINEARITIES, TransformConstants, get_nonlinearity,
                                   transform_constants)
from moejax.recover import ExpertEstimate, min_samples, recover, recover_experts

__version__ = "0.1.0"

__all__ = [
    "ExpertEstimate",
    "GatingInfo",
    "MoEParams",
    "NONLINEARITIES",
    "TransformConstants",
    "expert_error",
    "fit_gating",
    "gating_error",
    "get_nonlinearity",
    "log_likelihood",
    "match_experts",
    "min_samples",
    "posteriors",
    "predict",
    "random_params",
    "recover",
    "recover_experts",
    "sample",
    "transform_constants",
]
