"""`FitConfig`: `fit`'s settings, declared once (type, default, allowed values, check)."""

import dataclasses

from moejax import _validate
from moejax import prior as prior_lib
from moejax.nonlinearities import nonlinearity_names
from moejax.prior import Prior


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """`fit`'s settings (see `fit` for each), checked once by `checked`; the stages read them
    from here, and k selection fits each k with `dataclasses.replace(config, num_experts=k)`."""

    num_experts: int | str
    nonlinearity: str = "linear"
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

    def checked(self) -> "FitConfig":
        """The settings with counts and flags as Python values; ValueError naming the first
        bad one. num_experts's range and sigma's shape depend on the data (`fit` checks
        them)."""
        if not isinstance(self.nonlinearity, str) or self.nonlinearity not in nonlinearity_names():
            raise ValueError(f"nonlinearity must be one of {nonlinearity_names()} (a name, so "
                             "that the model can be saved; moejax.register_nonlinearity adds "
                             f"one), got {self.nonlinearity!r}.")
        if isinstance(self.num_experts, str) and self.num_experts != "auto":
            raise ValueError(f"num_experts must be an integer or 'auto', got "
                             f"{self.num_experts!r}.")
        if self.select_by not in ("bic", "cv"):
            raise ValueError(f"select_by must be 'bic' or 'cv', got {self.select_by!r}.")
        _validate.positive(self.refine_tol, "refine_tol")
        return dataclasses.replace(
            self,
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
            max_experts=_validate.count(self.max_experts, "max_experts"))
