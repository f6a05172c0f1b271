"""Planted laws: data drawn from known parameters plus noise are recovered, over several seeds, by every form."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from analysis import allocation, chinchilla, frontier, holdout, isoflop, loglinear, power, synthetic
from analysis.lbfgs import minimize_batch

SEEDS = range(4)


@pytest.mark.parametrize("direction, planted", [("falling", {"E": 2.0, "A": 60.0, "alpha": 0.3}),
                                                ("rising", {"E": 0.4, "A": 3.0, "alpha": 0.25})])
@pytest.mark.slow
def test_power_law_recovered(direction, planted):
    x = np.geomspace(1e6, 1e10, 12)
    covered = 0
    for seed in SEEDS:
        y = synthetic.power_law(x, **planted, direction=direction, relative_noise=0.005, seed=seed)
        fit = power.fit_power(x, y, bootstrap=60, seed=seed)
        assert fit.extra["direction"] == direction  # inferred from the trend
        assert fit.params["E"] == pytest.approx(planted["E"], rel=0.03)
        assert fit.params["alpha"] == pytest.approx(planted["alpha"], abs=0.06)
        assert fit.params["A"] == pytest.approx(planted["A"], rel=0.6)
        assert fit.goodness["rmse_log"] < 0.01
        covered += all(fit.ci[k][0] <= v <= fit.ci[k][1] for k, v in planted.items())
    assert covered >= len(SEEDS) - 1  # 95% intervals should hold the truth nearly always


def test_power_law_exact_data_is_fitted_exactly():
    x = np.geomspace(1e3, 1e7, 8)
    fit = power.fit_power(x, 3.0 + 40.0 * x ** -0.45, bootstrap=0)
    assert fit.params == pytest.approx({"E": 3.0, "A": 40.0, "alpha": 0.45}, rel=1e-5)
    assert fit.ci == {}


def test_loglinear_recovered():
    c = np.geomspace(1e12, 1e18, 10)
    for seed in SEEDS:
        y = 0.05 + 0.01 * np.log(c) + np.random.default_rng(seed).normal(0, 0.002, c.size)
        fit = loglinear.fit_loglinear(c, y, bootstrap=60, seed=seed)
        assert fit.params["b"] == pytest.approx(0.01, abs=5e-4)
        assert fit.params["a"] == pytest.approx(0.05, abs=0.015)
        assert fit.ci["b"][0] < fit.params["b"] < fit.ci["b"][1]
        assert fit.goodness["r2"] > 0.95


@pytest.mark.slow
def test_chinchilla_recovered():
    planted = synthetic.CHINCHILLA_LIKE
    n, d = (v.ravel() for v in np.meshgrid(np.geomspace(1e7, 1e10, 7), np.geomspace(1e9, 1e12, 7)))
    a_opt = planted["beta"] / (planted["alpha"] + planted["beta"])
    planted_theta = np.array([[np.log(planted["A"]), np.log(planted["B"]), np.log(planted["E"]),
                               planted["alpha"], planted["beta"]]])
    for seed in range(3):
        loss = synthetic.joint_law_runs(planted, n, d, relative_noise=0.005, seed=seed)
        fit = chinchilla.fit_chinchilla(n, d, loss, bootstrap=20, seed=seed)
        objective = chinchilla.batch_objective(np.log(n), np.log(d), np.log(loss), np.ones((1, n.size)))
        assert fit.objective <= objective(planted_theta, np.array([0]))[0]  # at least as good as the truth
        assert fit.params["E"] == pytest.approx(planted["E"], rel=0.03)
        assert fit.params["alpha"] == pytest.approx(planted["alpha"], abs=0.04)
        assert fit.params["beta"] == pytest.approx(planted["beta"], abs=0.04)
        assert fit.params["a_opt"] == pytest.approx(a_opt, abs=0.02)
        for name in ("A", "B"):  # weakly identified on 49 runs: within a factor 1.7
            assert abs(np.log(fit.params[name] / planted[name])) < 0.53, name
        assert fit.ci["alpha"][0] < fit.params["alpha"] < fit.ci["alpha"][1]


def test_compute_optimal_allocation_minimises_the_law():
    params = {**synthetic.CHINCHILLA_LIKE}
    params.update(chinchilla.allocation(params["alpha"], params["beta"], params["A"], params["B"]))
    budget = 1e21
    n_opt, d_opt = chinchilla.compute_optimal(params, budget)
    assert 6 * n_opt * d_opt == pytest.approx(budget)
    sizes = n_opt * np.logspace(-1, 1, 201)
    losses = chinchilla.predict_loss(params, sizes, budget / (6 * sizes))
    assert sizes[np.argmin(losses)] == pytest.approx(n_opt, rel=0.03)


def test_isoflop_recovers_the_allocation_exponent():
    planted = synthetic.CHINCHILLA_LIKE
    a_opt = planted["beta"] / (planted["alpha"] + planted["beta"])
    for seed in SEEDS:
        n, c, loss = synthetic.isoflop_runs(planted, np.geomspace(1e18, 1e21, 5), 9, 1.5, 0.003, seed)
        fit = isoflop.fit_isoflop(n, loss, c, bootstrap=40, seed=seed)
        assert len(fit.extra["budgets"]) == 5 and not fit.extra["skipped_budgets"]
        assert all(b["interior"] for b in fit.extra["budgets"])
        assert fit.params["a_opt"] == pytest.approx(a_opt, abs=0.03)
        assert fit.params["b_opt"] == pytest.approx(1 - fit.params["a_opt"])
        assert fit.ci["a_opt"][0] < a_opt + 0.02 and fit.ci["a_opt"][1] > a_opt - 0.02


def test_both_routes_to_n_opt_agree_on_a_planted_law_and_not_on_another():
    planted = synthetic.CHINCHILLA_LIKE
    n, c, loss = synthetic.isoflop_runs(planted, np.geomspace(1e18, 1e21, 5), 9, 1.5, 0.003, 0)
    iso = isoflop.fit_isoflop(n, loss, c, bootstrap=40, seed=0)
    joint = chinchilla.fit_chinchilla(n, c / (6 * n), loss, bootstrap=20, seed=0)
    agreement = allocation.compare(iso, joint)
    assert [b["compute"] for b in agreement["budgets"]] == [b["compute"] for b in iso.extra["budgets"]]
    assert agreement["max_abs_log_ratio"] < np.log(1.15)  # each budget's N* within 15% of the joint law's
    assert agreement["intervals_overlap"] is True
    assert agreement["a_opt_joint"] == pytest.approx(joint.params["a_opt"])

    steeper = dict(joint.params, beta=joint.params["beta"] * 2)  # another law: N_opt grows faster with C
    steeper.update(chinchilla.allocation(steeper["alpha"], steeper["beta"], steeper["A"], steeper["B"]))
    wrong = dataclasses.replace(joint, params=steeper, ci={"a_opt": (steeper["a_opt"] - 0.01, steeper["a_opt"] + 0.01)})
    disagreement = allocation.compare(iso, wrong)
    assert disagreement["intervals_overlap"] is False and disagreement["isoflop_inside_joint_interval"] is False
    assert disagreement["max_abs_log_ratio"] > np.log(1.5)
    assert allocation.compare(iso, dataclasses.replace(joint, ci={}))["intervals_overlap"] is None


def test_budget_grouping_is_anchored_not_chained():
    log_c = np.arange(18.0, 19.0, 0.05)  # a dense spread: chaining would make one budget
    labels = isoflop.group_budgets(10 ** log_c, tolerance_decades=0.1)
    assert labels.max() + 1 == 10  # pairs: 0.05 apart joins, 0.10 apart (in floating point just over) starts anew
    assert all(np.ptp(log_c[labels == k]) <= 0.1 + 1e-9 for k in np.unique(labels))


def test_budgets_are_grouped_within_each_history_length():
    compute = np.array([1.00e9, 1.05e9, 1.10e9, 1.02e9, 1.08e9, 5e9])
    history = np.array([50, 50, 50, 100, 100, 50])
    labels = isoflop.group_budgets_within(compute, history, tolerance_decades=0.1)
    assert labels[0] == labels[1] == labels[2] and labels[3] == labels[4]  # one compute, two profiles
    assert len({labels[0], labels[3], labels[5]}) == 3


def test_lower_envelope_and_frontier_law():
    rng = np.random.default_rng(0)
    compute = np.geomspace(1e15, 1e20, 40)
    best = 1.5 + 300.0 * compute ** -0.15
    loss = best * (1 + np.where(np.arange(40) % 3 == 0, 0.0, rng.uniform(0.02, 0.3, 40)))
    front = frontier.lower_envelope(compute, loss)
    assert front[np.arange(40) % 3 == 0].all()  # every run on the planted law is on the envelope
    running_min = np.minimum.accumulate(loss)
    assert np.array_equal(front, np.r_[True, loss[1:] < running_min[:-1]])
    fit = frontier.fit_frontier(compute, loss, bootstrap=30)
    assert fit.params["E"] == pytest.approx(1.5, rel=0.05)
    assert fit.params["alpha"] == pytest.approx(0.15, abs=0.03)


def test_holdout_forecast_of_a_true_law_is_accurate_and_of_a_wrong_one_is_not():
    x = np.geomspace(1e6, 1e10, 12)
    y = synthetic.power_law(x, 2.0, 60.0, 0.3, "falling", 0.002, seed=1)
    truth = holdout.holdout_forecast(x, y, 3, lambda rows: power.fit_power(x[rows], y[rows], bootstrap=0),
                                     lambda fit, rows: power.predict(fit.params, x[rows]))
    assert truth["train_points"] == 9 and truth["rows"] == [9, 10, 11]
    assert truth["max_train_compute"] < min(truth["compute"])
    assert truth["mean_abs_relative_error"] < 0.01
    wrong = holdout.holdout_forecast(x, y, 3, lambda rows: loglinear.fit_loglinear(x[rows][:4], y[rows][:4], bootstrap=0),
                                     lambda fit, rows: loglinear.predict(fit.params, x[rows]))
    assert wrong["mean_abs_relative_error"] > 5 * truth["mean_abs_relative_error"]


def test_batched_lbfgs_solves_independent_problems():
    # Rosenbrock from several starts at once, each with its own scale a in (a - x)^2 + 100 (y - x^2)^2
    targets = np.array([1.0, 2.0, -1.0, 0.5])

    def objective(xy, members):
        a = targets[members]
        x, y = xy[:, 0], xy[:, 1]
        value = (a - x) ** 2 + 100 * (y - x ** 2) ** 2
        grad = np.stack([-2 * (a - x) - 400 * x * (y - x ** 2), 200 * (y - x ** 2)], axis=1)
        return value, grad

    result = minimize_batch(objective, np.tile([-1.2, 1.0], (4, 1)), ftol=0.0, gtol=1e-9)
    assert result.converged.all()
    assert np.allclose(result.x[:, 0], targets, atol=1e-5)
    assert np.allclose(result.x[:, 1], targets ** 2, atol=1e-4)


def test_no_interval_from_resamples_that_all_repeat_the_original_draw():
    # 2 budgets of exactly 3 sizes: a draw keeps all 3 sizes of both budgets with probability (2/9)^2
    n = np.array([1e6, 2e6, 4e6, 2e6, 4e6, 8e6])
    c = np.array([1e15] * 3 + [4e15] * 3)
    loss = np.array([3.2, 3.0, 3.1, 2.9, 2.7, 2.8])
    fit = isoflop.fit_isoflop(n, loss, c, bootstrap=100, seed=0)
    assert fit.bootstrap_failed > 75 and fit.ci == {} and len(fit.samples) == 0  # the rest equal the original
    assert fit.params["a_opt"] > 0  # the point estimate stands
