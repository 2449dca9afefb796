"""`FitConfig`: `fit`'s settings, declared once (name, type, default, meaning, check). `fit`,
`select_num_experts`, `moejax.sklearn.MoERegressor` and the command line read them from here
(tests/test_config.py holds the last two to the same names and defaults)."""

import dataclasses

from moejax import _validate
from moejax import prior as prior_lib
from moejax.families import family_names, get_family
from moejax.nonlinearities import nonlinearity_names
from moejax.prior import Prior
from moejax.refinement import REFINERS


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """`fit`'s settings; `checked` validates them once, and the stages read them from here
    (k selection fits each k with `dataclasses.replace(config, num_experts=k)`).

    Attributes:
      num_experts: k >= 2 (above d, fitted from random starts only); 1 for least squares
        (one linear expert, a constant gate,
        sigma by maximum likelihood unless noise_std is given); or "auto", which considers
        only k whose free parameters number at most n / `selection.ROWS_PER_PARAMETER`
        (`selection.supported_experts`). An explicit k with more free parameters than rows
        is an error, and one with fewer than `ROWS_PER_PARAMETER` rows per parameter a
        warning.
      family: the distribution of y given an expert (`moejax.families`): "gaussian" (the
        default), "binomial" (a 0/1 y, logit link) or "poisson" (a count y, log link); a
        name in `moejax.family_names()`.
      nonlinearity: the experts' g, a name in `moejax.nonlinearity_names()` (so that the
        model can be saved); None: the family's default (linear for the Gaussian, the
        inverse of the canonical link otherwise, the only g binomial and Poisson take).
      noise_std: sigma in the target's units (fixed; a scalar, or one per expert), or None to
        estimate it (`fit` says how).
      whiten: whiten x (True) or only standardise its columns.
      num_refine_iters, refine_tol, num_refine_inits: the refinement's cap (0 skips it),
        tolerance and extra random starts.
      num_power_inits, num_gating_inits, num_gating_iters: the moment stage's restarts and
        the gating EM's starts and cap.
      per_expert_noise: learn one sigma per expert (else one shared).
      max_experts, select_by: for num_experts="auto": the largest k, and "bic" or "cv".
      chunk_size: None, or rows per block of every pass over the data (the moment stage, the
        gating EM and the refinement), so that temporaries do not grow with n.
      standard_errors: keep the training statistics behind `FittedMoE.coefficients`'
        standard errors and the information criteria: the observed information at the fit by
        exact autodiff, in float64 (docs/algorithm.md section 7); one more compiled program.
      prior: a `moejax.Prior` (the default's strengths, or others), or None for maximum
        likelihood.
      refiner: the refinement's solver, a name in `moejax.refinement.REFINERS` ("joint_em").
    """

    num_experts: int | str
    family: str = "gaussian"
    nonlinearity: str | None = None
    noise_std: object = None
    whiten: bool = True
    num_refine_iters: int = 3000
    refine_tol: float = 1e-8
    num_refine_inits: int = 16
    num_power_inits: int = 10
    num_gating_inits: int = 1
    num_gating_iters: int = 50
    per_expert_noise: bool = True
    max_experts: int = 4
    select_by: str = "bic"
    chunk_size: int | None = None
    standard_errors: bool = True
    prior: Prior | None = Prior()
    refiner: str = "joint_em"

    @classmethod
    def of(cls, config: "FitConfig | None", settings: dict, where: str = "fit") -> "FitConfig":
        """`config` (or the defaults) with `settings` (keyword arguments of `where`) in place
        of its fields, checked; TypeError for a name that is not a setting."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [name for name in settings if name not in names]
        if unknown:
            raise TypeError(f"{where}() got unexpected keyword argument(s) {unknown}; its "
                            f"settings are the fields of moejax.FitConfig: {names}.")
        if config is None:
            if "num_experts" not in settings:
                raise TypeError(f"{where}() needs num_experts (an integer k, or 'auto'), as a "
                                "keyword or in config.")
            return cls(**settings).checked()
        if not isinstance(config, cls):
            raise ValueError(f"config must be a moejax.FitConfig or None, got "
                             f"{type(config).__name__}.")
        return dataclasses.replace(config, **settings).checked()

    def checked(self) -> "FitConfig":
        """The settings with counts and flags as Python values; ValueError naming the first
        bad one. num_experts's range and sigma's shape depend on the data (`fit` checks
        them)."""
        if not isinstance(self.family, str) or self.family not in family_names():
            raise ValueError(f"family must be one of {family_names()}, got {self.family!r}.")
        family = get_family(self.family)
        nonlinearity = (family.default_nonlinearity if self.nonlinearity is None
                        else self.nonlinearity)
        if not isinstance(nonlinearity, str) or nonlinearity not in nonlinearity_names():
            raise ValueError(f"nonlinearity must be one of {nonlinearity_names()} (a name, so "
                             "that the model can be saved; moejax.register_nonlinearity adds "
                             "one, and on the command line a name that an --import module "
                             f"registers), got {self.nonlinearity!r}.")
        if family.nonlinearities is not None and nonlinearity not in family.nonlinearities:
            raise ValueError(f"nonlinearity must be one of {family.nonlinearities} for family "
                             f"{family.name!r} (its {family.link} link), got "
                             f"{self.nonlinearity!r}.")
        if self.noise_std is not None and not family.has_dispersion:
            raise ValueError(f"noise_std must be None for family {family.name!r}: its variance "
                             f"is fixed by its mean, got {self.noise_std!r}.")
        if isinstance(self.num_experts, str) and self.num_experts != "auto":
            raise ValueError(f"num_experts must be an integer or 'auto', got "
                             f"{self.num_experts!r}.")
        num_experts = (self.num_experts if isinstance(self.num_experts, str) else
                       _validate.count(self.num_experts, "num_experts"))  # a bool is no count
        if self.refiner not in REFINERS:
            raise ValueError(f"refiner must be one of {tuple(REFINERS)}, got {self.refiner!r}.")
        if self.select_by not in ("bic", "cv"):
            raise ValueError(f"select_by must be 'bic' or 'cv', got {self.select_by!r}.")
        _validate.positive(self.refine_tol, "refine_tol")
        return dataclasses.replace(
            self,
            num_experts=num_experts,
            nonlinearity=nonlinearity,
            prior=prior_lib.check(self.prior),
            whiten=_validate.flag(self.whiten, "whiten"),
            standard_errors=_validate.flag(self.standard_errors, "standard_errors"),
            per_expert_noise=_validate.flag(self.per_expert_noise, "per_expert_noise"),
            num_refine_iters=_validate.count(self.num_refine_iters, "num_refine_iters", minimum=0),
            num_refine_inits=_validate.count(self.num_refine_inits, "num_refine_inits",
                                              minimum=0),
            num_power_inits=_validate.count(self.num_power_inits, "num_power_inits"),
            num_gating_inits=_validate.count(self.num_gating_inits, "num_gating_inits"),
            num_gating_iters=_validate.count(self.num_gating_iters, "num_gating_iters"),
            max_experts=_validate.count(self.max_experts, "max_experts"),
            chunk_size=(None if self.chunk_size is None
                        else _validate.count(self.chunk_size, "chunk_size")))
