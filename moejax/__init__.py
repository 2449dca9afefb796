"""moejax: consistent learning of mixture-of-experts regression in JAX."""

from moejax import datasets, io, landscape, plot, sums
from moejax._version import __version__ as __version__
from moejax.compilation import enable_compilation_cache
from moejax.baselines import joint_em, joint_gd, random_init
from moejax.families import FAMILIES, Family, family_names, get_family, register_family
from moejax.config import FitConfig
from moejax.estimator import fit, select_num_experts
from moejax.fitted import FittedMoE
from moejax.refinement import FitReport
from moejax.gating import GatingInfo, fit_gating
from moejax.joint import refine
from moejax.landscape import DescentInfo, recover_by_descent
from moejax.metrics import expert_error, gating_error, match_experts
from moejax.model import log_likelihood, posteriors, predict, random_params, sample
from moejax.moments import initial_noise_std
from moejax.nonlinearities import (NONLINEARITIES, QuarticConstants, TransformConstants,
                                   get_nonlinearity, nonlinearity_names, output_second_moment,
                                   quartic_constants, register_nonlinearity,
                                   transform_constants)
from moejax.preprocessing import (Standardizer, fit_standardizer, inverse_target,
                                  transform_features, transform_target)
from moejax._validate import DataError, min_samples
from moejax.params import MoEParams
from moejax.prior import Prior
from moejax.recover import ExpertEstimate, RecoverInfo, recover, recover_experts
from moejax.selection import KSelection
from moejax.solver import FitInfo
from moejax.streams import Streamed, streamed
from moejax.tensor import PowerInfo


__all__ = [
    "ExpertEstimate",
    "FAMILIES",
    "Family",
    "FitConfig",
    "FitInfo",
    "FitReport",
    "FittedMoE",
    "DataError",
    "DescentInfo",
    "GatingInfo",
    "KSelection",
    "MoEParams",
    "NONLINEARITIES",
    "PowerInfo",
    "QuarticConstants",
    "Prior",
    "RecoverInfo",
    "Standardizer",
    "Streamed",
    "TransformConstants",
    "datasets",
    "enable_compilation_cache",
    "expert_error",
    "fit",
    "family_names",
    "fit_gating",
    "fit_standardizer",
    "gating_error",
    "get_family",
    "get_nonlinearity",
    "initial_noise_std",
    "inverse_target",
    "io",
    "plot",
    "joint_em",
    "joint_gd",
    "landscape",
    "log_likelihood",
    "match_experts",
    "min_samples",
    "nonlinearity_names",
    "output_second_moment",
    "posteriors",
    "predict",
    "quartic_constants",
    "random_init",
    "random_params",
    "recover",
    "recover_by_descent",
    "recover_experts",
    "refine",
    "register_family",
    "register_nonlinearity",
    "sample",
    "select_num_experts",
    "streamed",
    "sums",
    "transform_constants",
    "transform_features",
    "transform_target",
]
