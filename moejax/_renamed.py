"""Old argument names kept working for one version (docs/api.md, "Names")."""

import functools
import re

from moejax import _validate

# The names of 0.1 and the names that replaced them in 0.2 (one name per idea: random starts
# `num_<stage>_inits`, caps `num_<stage>_iters`, tolerances `<stage>_tol` in a function of
# several stages). The old names are to be removed in 0.3.
RENAMED = {
    "num_restarts": "num_power_inits",
    "num_em_iters": "num_gating_iters",
    "em_tol": "gating_tol",
    "subspace_iters": "num_subspace_iters",
    "refine_iters": "num_refine_iters",
    "num_random_starts": "num_refine_inits",
}
# `fit`'s tolerance is its refinement stage's.
FIT_RENAMED = {**RENAMED, "tol": "refine_tol"}


def translate(kwargs: dict, renamed: dict, where: str) -> dict:
    """`kwargs` with every old name (a key of `renamed`) replaced by its new one, each with a
    DeprecationWarning; TypeError if both names of one idea are given."""
    kwargs = dict(kwargs)
    for old, new in renamed.items():
        if old in kwargs:
            if new in kwargs:
                raise TypeError(f"{where}() got both {old!r} and its new name {new!r}; "
                                f"pass only {new!r}.")
            _validate.warn(f"{where}: {old!r} is now called {new!r}; the old name will be "
                           "removed in moejax 0.3.", DeprecationWarning)
            kwargs[new] = kwargs.pop(old)
    return kwargs


def accepts_old_names(*names, renamed=RENAMED):
    """Decorator: the function also accepts the old names `names` (keys of `renamed`) of its
    keyword arguments, with a DeprecationWarning."""
    renamed = {name: renamed[name] for name in names}

    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            used = [old for old in renamed if old in kwargs]
            if not used:
                return fn(*args, **kwargs)
            try:
                return fn(*args, **translate(kwargs, renamed, fn.__name__))
            except ValueError as e:  # a bad value: named as the caller spelled it
                if type(e) is not ValueError:
                    raise
                message = str(e)
                for old in used:
                    message = re.sub(rf"\b{renamed[old]}\b",
                                     f"{old} (now called {renamed[old]})", message)
                raise ValueError(message) from None

        return call

    return wrap
