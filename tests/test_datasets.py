import numpy as np

from moejax import datasets


def test_load_airfoil_shapes_names_and_values():
    data = datasets.load_airfoil()
    assert data.features.shape == (1503, 5) and data.target.shape == (1503,)
    assert data.feature_names == datasets.AIRFOIL_COLUMNS[:5]
    assert data.target_name == "scaled_sound_pressure_db"
    assert data.features.dtype == np.float64 and np.all(np.isfinite(data.features))
    # First row of the UCI file, and known ranges (sound pressure 103-141 dB).
    np.testing.assert_allclose(data.features[0], [800, 0, 0.3048, 71.3, 0.00266337])
    assert data.target[0] == 126.201
    assert 100 < data.target.min() < data.target.max() < 145
