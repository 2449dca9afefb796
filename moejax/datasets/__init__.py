"""Data sets shipped inside the package (read with importlib.resources, so they work offline)."""

import importlib.resources
import io
from typing import NamedTuple

import numpy as np

AIRFOIL_COLUMNS = (
    "frequency_hz",
    "angle_of_attack_deg",
    "chord_length_m",
    "free_stream_velocity_m_s",
    "suction_side_displacement_thickness_m",
    "scaled_sound_pressure_db",
)
_AIRFOIL_ROWS = 1503


class Dataset(NamedTuple):
    """features: (n, d) float64; target: (n,) float64; names of the feature columns and target."""

    features: np.ndarray
    target: np.ndarray
    feature_names: tuple[str, ...]
    target_name: str


def load_airfoil() -> Dataset:
    """NASA airfoil self-noise (Brooks, Pope and Marcolini, 1989; UCI, CC BY 4.0).

    1503 rows; five features (frequency, angle of attack, chord length, free-stream velocity,
    suction-side displacement thickness) and the target, the scaled sound pressure level in dB.

    Returns:
      Dataset(features (1503, 5), target (1503,), feature_names, target_name).

    Raises:
      ValueError: if the shipped file does not have the expected header, 1503 rows and 6
        finite numeric columns (a damaged installation).

    >>> data = load_airfoil()
    >>> data.features.shape, data.target_name
    ((1503, 5), 'scaled_sound_pressure_db')
    """
    text = importlib.resources.files(__package__).joinpath(
        "airfoil_self_noise.tsv").read_text(encoding="utf-8")
    header, _, body = text.partition("\n")
    if tuple(header.strip().split("\t")) != AIRFOIL_COLUMNS:
        raise ValueError(f"airfoil_self_noise.tsv has header {header.strip()!r}; expected the "
                         f"columns {AIRFOIL_COLUMNS} (damaged installation?).")
    table = np.loadtxt(io.StringIO(body), delimiter="\t", ndmin=2)
    if table.shape != (_AIRFOIL_ROWS, len(AIRFOIL_COLUMNS)) or not np.all(np.isfinite(table)):
        raise ValueError(f"airfoil_self_noise.tsv holds a {table.shape} table; expected "
                         f"({_AIRFOIL_ROWS}, {len(AIRFOIL_COLUMNS)}) finite numbers.")
    return Dataset(table[:, :-1], table[:, -1], AIRFOIL_COLUMNS[:-1], AIRFOIL_COLUMNS[-1])
