"""The JAX quantisers: k-means (seeding, Lloyd, capped assignment), residual k-means, RQ-VAE."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from semantic_ids import kmeans
from semantic_ids.residual_kmeans import place_rows, relative_error, residual_kmeans

K = 8
N = 256


def planted(sizes: list[int], spread: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points around K well-separated centres (one cluster per entry of sizes), and their labels."""
    rng = np.random.default_rng(seed)
    centres = np.array([[10.0 * (i % 2), 10.0 * ((i // 2) % 2), 10.0 * (i // 4), 0.0] for i in range(K)])
    labels = np.repeat(np.arange(K), sizes)
    points = centres[labels] + rng.normal(size=(len(labels), 4)) * spread
    return points.astype(np.float32), labels


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labellings split the points identically (up to renaming the labels)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.fixture(scope="module")
def even() -> tuple[np.ndarray, np.ndarray]:
    return planted([N // K] * K)


@pytest.fixture(scope="module")
def skewed() -> tuple[np.ndarray, np.ndarray]:
    return planted([N - 7 * 16, *[16] * 7])  # one cluster of 144, seven of 16


@pytest.mark.slow
def test_planted_clusters_are_recovered(even):
    points, labels = even
    x, w = place_rows(points, None)
    fitted = kmeans.fit(x, w, K, jax.random.key(0), kmeans.KMeansOptions())
    assert same_partition(np.asarray(fitted.assignment), labels)
    # The inertia is the within-cluster scatter of the planted clusters.
    scatter = sum(np.sum((points[labels == c] - points[labels == c].mean(0)) ** 2) for c in range(K))
    np.testing.assert_allclose(float(fitted.inertia), scatter, rtol=1e-4)


@pytest.mark.slow
def test_fit_is_deterministic_given_the_key(skewed):
    x, w = place_rows(skewed[0], None)
    options = kmeans.KMeansOptions(n_init=2)
    first = kmeans.fit(x, w, K, jax.random.key(3), options)
    again = kmeans.fit(x, w, K, jax.random.key(3), options)
    np.testing.assert_array_equal(np.asarray(first.centres), np.asarray(again.centres))
    np.testing.assert_array_equal(np.asarray(first.assignment), np.asarray(again.assignment))


@pytest.mark.slow
def test_more_restarts_never_raise_the_inertia(skewed):
    """n_init keeps the lowest-inertia restart: with overlapping clusters restarts differ, and the
    best of 4 is at most the best of 1 (its first restart is among them only by chance, so compare
    against every single-restart fit of the same keys)."""
    points = skewed[0] + np.random.default_rng(1).normal(size=skewed[0].shape).astype(np.float32) * 4.0
    x, w = place_rows(points, None)
    best_of_four = float(kmeans.fit(x, w, K, jax.random.key(0), kmeans.KMeansOptions(n_init=4)).inertia)
    _, restart_key = jax.random.split(jax.random.key(0))
    singles = []
    for key in jax.random.split(restart_key, 4):
        centres, inertia = kmeans._fit_restart(x, w, K, key, kmeans.KMeansOptions(n_init=1))
        singles.append(float(inertia))
    assert best_of_four == pytest.approx(min(singles), rel=1e-5)
    assert len(set(round(s, 3) for s in singles)) > 1  # the restarts really differ


def test_seeding_uses_two_plus_log_k_candidates():
    assert [kmeans.seeding_trials(k) for k in (2, 8, 256, 8192)] == [2, 4, 7, 11]


@pytest.mark.slow
def test_minibatch_lloyd_recovers_planted_clusters(even):
    points, labels = even
    x, w = place_rows(points, None)
    fitted = kmeans.fit(x, w, K, jax.random.key(0), kmeans.KMeansOptions(lloyd="minibatch", minibatch_size=64))
    assert same_partition(np.asarray(fitted.assignment), labels)


def reference_capped_assignment(d2: np.ndarray, cap: int) -> np.ndarray:
    """The proposal rounds of kmeans.capped_assignment, written as plain loops."""
    n, k = d2.shape
    assignment = np.full(n, -1)
    counts = np.zeros(k, int)
    while (assignment < 0).any():
        proposals: dict[int, list[tuple[float, int]]] = {}
        for i in np.flatnonzero(assignment < 0):
            open_centres = [c for c in range(k) if counts[c] < cap]
            best = min(open_centres, key=lambda c: (np.float32(d2[i, c]), c))
            proposals.setdefault(best, []).append((np.float32(d2[i, best]), i))
        for centre, proposers in proposals.items():
            for _, i in sorted(proposers)[: cap - counts[centre]]:
                assignment[i] = centre
                counts[centre] += 1
    return assignment


def test_capped_assignment_equals_the_reference_and_holds_the_cap(skewed):
    points, _ = skewed
    rng = np.random.default_rng(0)
    centres = points[rng.choice(len(points), K, replace=False)]
    d2 = np.asarray(kmeans.squared_distances(points, centres))
    cap = kmeans.balanced_cap(len(points), K)
    got = np.asarray(kmeans.capped_assignment(d2, np.ones(len(points), np.float32), cap))
    np.testing.assert_array_equal(got, reference_capped_assignment(d2, cap))
    assert np.bincount(got, minlength=K).max() <= cap


@pytest.mark.slow
def test_balanced_fit_caps_every_cluster_exactly(skewed):
    points, _ = skewed
    padded = np.concatenate([points, points[:5]])  # 5 extra rows, marked as padding
    x, w = place_rows(padded, None)
    w = w.at[-5:].set(0.0)
    fitted = kmeans.fit(x, w, K, jax.random.key(0), kmeans.KMeansOptions(balanced=True))
    assignment = np.asarray(fitted.assignment)
    assert (assignment[-5:] == kmeans.UNASSIGNED).all()
    counts = np.bincount(assignment[:-5], minlength=K)
    assert counts.sum() == N and counts.max() <= kmeans.balanced_cap(N, K) == N // K
    assert (counts == N // K).all()  # N is a multiple of K: the cap is met exactly


@pytest.mark.slow
def test_residual_levels_lower_the_reconstruction_error(skewed):
    points = skewed[0] + np.random.default_rng(2).normal(size=skewed[0].shape).astype(np.float32)
    errors = [relative_error(points, residual_kmeans(points, levels, K, 0, kmeans.KMeansOptions(n_init=1)).reconstruction)
              for levels in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.slow
def test_residual_codes_reconstruct_from_their_codebooks(even):
    points, _ = even
    quantised = residual_kmeans(points, 2, K, 0, kmeans.KMeansOptions(balanced=True, n_init=1))
    rebuilt = sum(quantised.codebooks[level][quantised.codes[:, level]] for level in range(2))
    np.testing.assert_allclose(rebuilt, quantised.reconstruction, atol=1e-5)


@pytest.mark.slow
def test_gumbel_draws_are_unchanged_by_trailing_rows():
    """What makes the draws independent of mesh padding (jax_threefry_partitionable)."""
    short = kmeans.draw(jax.random.key(0), jax.numpy.zeros(259), 5)
    padded = kmeans.draw(jax.random.key(0), jax.numpy.concatenate([jax.numpy.zeros(259), jax.numpy.full(5, -jax.numpy.inf)]), 5)
    np.testing.assert_array_equal(np.asarray(short), np.asarray(padded))


@pytest.mark.slow
@pytest.mark.parametrize("balanced, sample_per_centre, spread", [(False, 256, 0.2), (True, 256, 0.2), (True, 16, 1.5)])
def test_codes_are_the_same_on_eight_devices(skewed, balanced, sample_per_centre, spread):
    """Items spread over a mesh (with padding: 256 + 3 rows over 8 devices) get the same codes; also
    when the centres are fitted on a sample (16 per centre) of overlapping clusters."""
    points = np.concatenate([skewed[0], skewed[0][:3] + 0.05])
    points = points + np.random.default_rng(4).normal(size=points.shape).astype(np.float32) * (spread - 0.2)
    options = kmeans.KMeansOptions(balanced=balanced, n_init=2, sample_per_centre=sample_per_centre)
    single = residual_kmeans(points, 2, K, 0, options)
    mesh = Mesh(np.asarray(jax.devices()[:8]), ("rows",))
    sharded = residual_kmeans(points, 2, K, 0, options, mesh=mesh)
    np.testing.assert_array_equal(single.codes, sharded.codes)
    np.testing.assert_allclose(single.reconstruction, sharded.reconstruction, atol=1e-4)


@pytest.mark.slow
def test_rqvae_uses_its_codes_and_beats_its_initial_error():
    from semantic_ids.rqvae import RQVAEOptions, train_rqvae

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(32, 8)) * 3
    points = (centres[rng.integers(0, 32, 512)] + rng.normal(size=(512, 8)) * 0.5).astype(np.float32)
    options = RQVAEOptions(hidden=(32, 16), latent=4, steps=300, batch_size=256, learning_rate=3e-3, reset_every=50)
    quantised, history = train_rqvae(points, 2, K, 0, options)
    utilisation = [len(np.unique(quantised.codes[:, level])) / K for level in range(2)]
    assert min(utilisation) > 0.8, utilisation
    assert history["final_recon_error"] < history["initial_recon_error"]
    again, _ = train_rqvae(points, 2, K, 0, options)
    np.testing.assert_array_equal(quantised.codes, again.codes)


@pytest.mark.slow
def test_rqvae_gradients_put_beta_on_the_commitment_only():
    """d/d(codeword) of the codebook terms is 2 (e - sg[r]) with no beta; d/dz is 2 beta (r - sg[e])
    summed over the levels: the commitment weight is the one the spec gives, not ignored."""
    import jax.numpy as jnp

    from semantic_ids.rqvae import quantise

    z = jax.random.normal(jax.random.key(0), (6, 3))
    books = jax.random.normal(jax.random.key(1), (2, 4, 3))
    beta = 0.25
    grad_books, grad_z = jax.grad(lambda b, z: jnp.mean(quantise(z, b, beta).codebook_loss), (0, 1))(books, z)
    q = quantise(z, books, beta)
    residuals, codes = np.asarray(q.residuals), np.asarray(q.codes)
    expected_books, expected_z = np.zeros(books.shape), np.zeros(z.shape)
    for level in range(2):
        chosen = np.asarray(books)[level][codes[:, level]]
        for row in range(6):
            expected_books[level, codes[row, level]] += 2 * (chosen[row] - residuals[level, row]) / 6
        expected_z += 2 * beta * (residuals[level] - chosen) / 6
    np.testing.assert_allclose(np.asarray(grad_books), expected_books, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad_z), expected_z, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_rqvae_loss_matches_its_formula():
    """Reconstruction summed over features + codebook + 0.25 x commitment, per level."""
    import jax.numpy as jnp

    from semantic_ids.rqvae import RQVAE, RQVAEOptions

    model = RQVAE(6, 2, 4, RQVAEOptions(hidden=(8,), latent=3))
    params = model.init(jax.random.key(0))
    params["codebooks"] = jax.random.normal(jax.random.key(1), (2, 4, 3))
    x = jax.random.normal(jax.random.key(2), (5, 6))
    loss, (reconstruction, q) = model.losses(params, x)
    z = np.asarray(model.encode(params, x))
    books = np.asarray(params["codebooks"])
    residual, total, expected = z, np.zeros_like(z), np.zeros(5)
    for level in range(2):
        distances = ((residual[:, None, :] - books[level][None]) ** 2).sum(-1)
        chosen = books[level][distances.argmin(1)]
        expected += 1.25 * ((residual - chosen) ** 2).sum(-1)  # forward value: 1 + beta
        total, residual = total + chosen, residual - chosen
    x_hat = model.decoder.apply({"params": params["decoder"]}, jnp.asarray(total))
    expected += np.asarray(((x - x_hat) ** 2).sum(-1))
    np.testing.assert_allclose(float(loss), expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(reconstruction), float(((x - x_hat) ** 2).sum(-1).mean()), rtol=1e-5)


def test_options_refuse_bad_values():
    with pytest.raises(ValueError, match="lloyd"):
        kmeans.KMeansOptions(lloyd="elkan")
    with pytest.raises(ValueError, match="n_init"):
        kmeans.KMeansOptions(n_init=0)


@pytest.mark.slow
def test_rqvae_trains_on_eight_devices_like_on_one():
    """Batches split over a mesh: the same codes as one device after a few steps (planted data)."""
    from semantic_ids.rqvae import RQVAEOptions, train_rqvae

    points, _ = planted([N // K] * K, spread=0.3)
    options = RQVAEOptions(hidden=(16,), latent=4, steps=20, batch_size=64, reset_every=0)
    single, _ = train_rqvae(points, 1, K, 0, options)
    mesh = Mesh(np.asarray(jax.devices()[:8]), ("rows",))
    sharded, _ = train_rqvae(points, 1, K, 0, options, mesh=mesh)
    np.testing.assert_array_equal(single.codes, sharded.codes)
    np.testing.assert_allclose(single.reconstruction, sharded.reconstruction, atol=1e-4)
