"""Pictures of a fitted MoE with matplotlib (optional: `pip install matplotlib`, the
`experiments` extra): the experts' lines and the gate along one feature, how sure the
memberships are, and the scores behind a choice of k. Each function draws into axes it is
given (or new ones) and returns them; `overview` makes the figure `python -m moejax plot`
writes. docs/api.md "Pictures"."""

import numpy as np

from moejax.fitted import FittedMoE
from moejax.selection import KSelection

# Points along the feature at which the experts' means and the gate are drawn.
NUM_POINTS = 200
# An expert's line is solid where the gate gives it at least this probability.
GATE_SHOWN = 0.1


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("moejax.plot needs matplotlib: pip install matplotlib") from e
    return plt


def _rows(model: FittedMoE, x) -> np.ndarray:
    """x as a float64 (n, d) array in the model's column order (a DataFrame's columns matched
    by name), checked as the per-row methods check it."""
    return np.asarray(model._checked(x), np.float64)


def feature_index(model: FittedMoE, feature) -> int:
    """The column of x that `feature` names: one of `model.feature_names`, or an integer
    index; ValueError otherwise."""
    names = list(model.feature_names or [])
    if isinstance(feature, str) and feature in names:
        return names.index(feature)
    if isinstance(feature, (int, np.integer)) and not isinstance(feature, (bool, np.bool_)) \
            and 0 <= feature < model.dim:
        return int(feature)
    raise ValueError(f"feature must be one of the model's features {names} or an index in "
                     f"[0, {model.dim}), got {feature!r}.")


def _along(model: FittedMoE, x: np.ndarray, j: int) -> np.ndarray:
    """NUM_POINTS rows spanning feature j's range in x, the other features at their medians."""
    grid = np.tile(np.median(x, axis=0), (NUM_POINTS, 1))
    grid[:, j] = np.linspace(x[:, j].min(), x[:, j].max(), NUM_POINTS)
    return grid


def gating_feature(model: FittedMoE, x) -> int:
    """The feature along which the gate's probabilities move most (over its range in x, the
    others at their medians): the default of `overview`."""
    x = _rows(model, x)
    spans = [np.ptp(np.asarray(model.gate_probabilities(_along(model, x, j))), axis=0).max()
             for j in range(model.dim)]
    return int(np.argmax(spans))


def _label(model: FittedMoE, j: int) -> str:
    return model.feature_names[j] if model.feature_names else f"x{j + 1}"


def experts_along(model: FittedMoE, x, y, feature, *, axes=None):
    """Two panels over one feature: the rows (y against the feature) coloured by their most
    probable expert (`clusters`), with each expert's mean (`expert_means`) along the feature,
    and below, the gate's probability of each expert; the other features held at their
    medians in x.

    Args:
      model: a FittedMoE; x: (n, d) features (a DataFrame matched by name); y: (n,) targets.
      feature: a name in `model.feature_names` or a column index.
      axes: two matplotlib Axes (top, bottom), or None for a new figure.

    Returns:
      The two Axes.
    """
    plt = _pyplot()
    x, y, j = _rows(model, x), np.asarray(y, np.float64), feature_index(model, feature)
    grid = _along(model, x, j)
    means = np.asarray(model.expert_means(grid))
    gates = np.asarray(model.gate_probabilities(grid))
    clusters = np.asarray(model.clusters(x, y))
    if axes is None:
        _, axes = plt.subplots(2, 1, sharex=True, figsize=(6, 5),
                               gridspec_kw=dict(height_ratios=[3, 1]))
    top, bottom = axes
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i in range(model.num_experts):
        colour = colours[i % len(colours)]
        rows = clusters == i + 1
        top.scatter(x[rows, j], y[rows], s=6, alpha=0.4, color=colour)
        # Solid where the gate gives the expert at least GATE_SHOWN: elsewhere its line is an
        # extrapolation that the mixture hardly uses.
        top.plot(grid[:, j], means[:, i], color=colour, lw=1, ls=":")
        top.plot(grid[:, j], np.where(gates[:, i] >= GATE_SHOWN, means[:, i], np.nan),
                 color=colour, lw=2, label=f"expert {i + 1}")
        bottom.plot(grid[:, j], gates[:, i], color=colour, lw=2)
    top.set(ylabel=model.target_name or "y",
            title=f"experts' means (solid where the gate gives {GATE_SHOWN:.0%} or more)")
    top.legend(loc="best", fontsize="small")
    bottom.set(xlabel=_label(model, j), ylabel="P(expert | x)", ylim=(-0.02, 1.02))
    return axes


def memberships(model: FittedMoE, x, y, *, ax=None):
    """A histogram of each row's largest posterior probability, by its most probable expert:
    near 1, the experts are told apart; near 1/k, the rows could belong to any.

    Args:
      model: a FittedMoE; x: (n, d) features; y: (n,) targets.
      ax: a matplotlib Axes, or None for a new figure.

    Returns:
      The Axes.
    """
    plt = _pyplot()
    post = np.asarray(model.posteriors(_rows(model, x), np.asarray(y, np.float64)))
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    bins = np.linspace(1 / model.num_experts, 1, 21)
    top = post.max(axis=1)
    ax.hist([top[post.argmax(axis=1) == i] for i in range(model.num_experts)], bins=bins,
            stacked=True, label=[f"expert {i + 1}" for i in range(model.num_experts)])
    ax.set(xlabel="largest posterior probability of a row", ylabel="rows")
    ax.legend(loc="upper left", fontsize="small")
    return ax


def selection(scores: KSelection, *, axes=None):
    """The scores of every k tried (`FittedMoE.selection`, `select_num_experts`): training
    and cross-validated log-likelihood per row with BIC's choice marked, and the M2 spectrum
    (k of its eigenvalues stand out when the model holds).

    Args:
      scores: a KSelection.
      axes: two matplotlib Axes, or None for a new figure.

    Returns:
      The two Axes.
    """
    plt = _pyplot()
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    left, right = axes
    if not np.all(np.isnan(scores.cv_log_likelihood)):
        left.errorbar(scores.num_experts, scores.cv_log_likelihood, yerr=scores.cv_std,
                      marker="o", label="cross-validated")
    left.plot(scores.num_experts, scores.log_likelihood, marker="s", label="training")
    left.axvline(scores.best_bic, color="grey", ls="--", label=f"BIC: k = {scores.best_bic}")
    left.set(xlabel="k", ylabel="mean log-likelihood per row")
    left.legend(fontsize="small")
    right.plot(np.arange(1, len(scores.m2_spectrum) + 1), scores.m2_spectrum, marker="o")
    right.set(xlabel="index", ylabel="eigenvalue of sign(c2) M2")
    return axes


def overview(model: FittedMoE, x, y, feature=None):
    """One figure that explains a fit: `experts_along` the feature (by default the one the
    gate depends on most, `gating_feature`), `memberships`, and `selection` when the model
    chose its k.

    Args:
      model: a FittedMoE; x: (n, d) features; y: (n,) targets.
      feature: a feature name or index, or None.

    Returns:
      The matplotlib Figure.
    """
    plt = _pyplot()
    j = gating_feature(model, x) if feature is None else feature_index(model, feature)
    rows = 4 if model.selection is not None else 3
    fig = plt.figure(figsize=(7, 2.6 * rows))
    grid = fig.add_gridspec(rows, 2, height_ratios=[3, 1, 1.5] + [1.8] * (rows - 3))
    top = fig.add_subplot(grid[0, :])
    experts_along(model, x, y, j, axes=(top, fig.add_subplot(grid[1, :], sharex=top)))
    memberships(model, x, y, ax=fig.add_subplot(grid[2, :]))
    if model.selection is not None:
        selection(model.selection, axes=(fig.add_subplot(grid[3, 0]),
                                         fig.add_subplot(grid[3, 1])))
    fig.tight_layout()
    return fig
