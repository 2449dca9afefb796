"""The method as a researcher would first write it from the paper: NumPy, float64, moments with
np.einsum, the tensor power method and the gating EM in Python loops. A benchmark baseline
(experiments/bench_recover.py), not library code; also a check that moejax computes the same
thing (tests/test_experiments.py)."""

import numpy as np
from scipy.special import logsumexp, softmax


def moments_numpy(x, y, b, a1, a2):
    """M2 (d, d) by np.einsum, and the weights T3(y) (n,)."""
    n, d = x.shape
    t2 = y**2 + b * y
    t3 = y**3 + a2 * y**2 + a1 * y
    m2 = np.einsum("n,ni,nj->ij", t2, x, x) / n - t2.mean() * np.eye(d)
    return m2, t3


def power_method(t, k, rng, num_power_inits=10, num_iters=100):
    """Robust tensor power method with deflation: eigenvalues (k,), eigenvectors (k, k)."""
    lams, vecs = [], []
    for _ in range(k):
        best = None
        for _ in range(num_power_inits):
            v = rng.standard_normal(t.shape[0])
            v /= np.linalg.norm(v)
            for _ in range(num_iters):
                v = np.einsum("ijl,j,l->i", t, v, v)
                v /= np.linalg.norm(v)
            lam = np.einsum("ijl,i,j,l->", t, v, v, v)
            if best is None or lam > best[0]:
                best = (lam, v)
        lam, v = best
        lams.append(lam)
        vecs.append(v)
        t = t - lam * np.einsum("i,j,l->ijl", v, v, v)
    return np.array(lams), np.array(vecs)


def gating_em_numpy(x, y, experts, sigma, g, rng, num_inits=4, num_iters=50):
    """EM for the gating with the experts fixed (Bohning M-step), best of num_inits starts."""
    n, d = x.shape
    k = experts.shape[0]
    log_dens = (-0.5 * ((y[:, None] - g(x @ experts.T)) / sigma) ** 2
                - np.log(sigma * np.sqrt(2 * np.pi)))
    gram_inv = np.linalg.inv(x.T @ x / n)
    best = None
    for _ in range(num_inits):
        w = rng.standard_normal((k, d)) / np.sqrt(d)
        w[-1] = 0
        for _ in range(num_iters):
            logits = x @ w.T
            gate = softmax(logits, axis=1)
            resp = softmax(logits + log_dens, axis=1)
            grad = (resp - gate)[:, :-1].T @ x / n
            grad = 2 * (grad + grad.sum(0, keepdims=True))
            w[:-1] += grad @ gram_inv
        logits = x @ w.T
        ll = np.mean(logsumexp(logits + log_dens, axis=1) - logsumexp(logits, axis=1))
        if best is None or ll > best[0]:
            best = (ll, w.copy())
    return best[1]


def recover_numpy(x, y, k, consts, sigma, g, seed=0):
    """experts (k, d) and gating (k, d) by moments + tensor power method + gating EM."""
    rng = np.random.default_rng(seed)
    b, a1, a2, c2, c3 = (float(v) for v in consts)
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    m2, t3 = moments_numpy(x, y, b, a1, a2)
    eigvals, eigvecs = np.linalg.eigh(np.sign(c2) * m2)
    eigvals, eigvecs = eigvals[::-1][:k], eigvecs[:, ::-1][:, :k]
    wh = eigvecs / np.sqrt(np.maximum(eigvals, 1e-12))
    xw = x @ wh
    n = len(y)
    m = np.einsum("n,ni->i", t3, xw) / n
    bb = wh.T @ wh
    t = (np.einsum("n,ni,nj,nl->ijl", t3, xw, xw, xw) / n - np.einsum("i,jl->ijl", m, bb)
         - np.einsum("j,il->ijl", m, bb) - np.einsum("l,ij->ijl", m, bb))
    lam, v = power_method(np.sign(c3) * t, k, rng)
    raw = (lam * abs(c2) / abs(c3))[:, None] * ((v * np.sqrt(eigvals)) @ eigvecs.T)
    experts = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    return experts, gating_em_numpy(x, y, experts, sigma, g, rng)
