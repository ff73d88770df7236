"""The replica recommendation (forecast_loop.capacity): each expected value follows from the definition.

Forecast point i (0-based) of an origin is at origin + (i+1)*step and holds the load of the step that
ends there; the points counted are those whose step begins before now + lead_time + interval; the load is the maximum of the last scale_down_window seconds of them.
"""
from __future__ import annotations

import numpy as np
import pytest

from forecast_loop.capacity import Capacity, Recommendation, Recommender

STEP = 300.0
RAMP = np.arange(1.0, 13.0)  # point i is i + 1: the max over the first k points is k


def rec(capacity: Capacity, interval: float = 60.0) -> Recommender:
    return Recommender(capacity, interval)


@pytest.mark.parametrize("lead_time, interval, now_after_origin, points", [
    (300, 60, 10, 2),       # horizon end origin+370: the steps ending at +300 and +600 (begun at +300)
    (600, 60, 10, 3),       # origin+670: the step ending at +900 has begun at +600
    (540, 60, 0, 2),        # origin+600 exactly: the step beginning there does not count
    (540, 61, 0, 3),        # origin+601: it does
    (0, 1, 0, 1),           # within the first step: the first point only
    (3600, 60, 0, 12),      # beyond the model's horizon: every point
    (3000, 60, 120, 11),    # origin+3180: the steps begun by then, up to the one ending at +3300
])
def test_raw_load_is_the_max_over_the_steps_until_lead_time_plus_one_interval(lead_time, interval, now_after_origin, points):
    origin = 1_000_000.0
    r = rec(Capacity(calibrate=False, per_replica=1.0, max_replicas=100, lead_time=lead_time), interval)
    forecast = np.stack([RAMP, RAMP[::-1] * 10])  # a rising series and a falling one
    out = r.update(origin + now_after_origin, origin, STEP, ["up", "down"], forecast)
    assert out.raw_load.tolist() == [float(points), 120.0]  # falling: its first point is its max
    assert out.desired.tolist() == [points, 100]


@pytest.mark.parametrize("load, per_replica, lo, hi, desired", [
    (250.0, 100.0, 1, 10, 3),    # ceil(2.5)
    (300.0, 100.0, 1, 10, 3),    # exactly 3 replicas' worth: 3, not 4
    (1.1, 0.1, 1, 20, 11),       # 11.000000000000002 in floating point is still 11
    (0.0, 100.0, 1, 10, 1),      # the floor
    (0.0, 100.0, 0, 10, 0),      # scale to zero allowed
    (-5.0, 100.0, 0, 10, 0),     # a negative forecast never goes below the floor
    (1e300, 1e-300, 2, 10, 10),  # the ceiling, without overflow
    (0.01, 100.0, 0, 10, 1),     # any load at all needs a replica
])
def test_desired_is_ceil_of_load_over_per_replica_clamped(load, per_replica, lo, hi, desired):
    capacity = Capacity(calibrate=False, per_replica=per_replica, min_replicas=lo, max_replicas=hi)
    out = rec(capacity).update(0.0, 0.0, STEP, ["k"], np.array([[load]]))
    assert out.desired.dtype.kind == "i" and out.desired.tolist() == [desired]
    assert out.load.tolist() == [load]


def test_scale_up_at_once_scale_down_after_the_window():
    r = rec(Capacity(calibrate=False, per_replica=1.0, max_replicas=100, scale_down_window=300), 60.0)
    raws = [2, 10, 3, 3, 3, 3, 3, 3, 12, 1]
    loads = []
    for n, value in enumerate(raws):
        now = 60.0 * n
        loads.append(r.update(now, now, STEP, [("service", "a")], np.full((1, 12), float(value))).load[0])
    # t=60 rises to 10 at once; 10 counts while younger than 300 s (through t=300), so t=360 is the
    # first iteration where only the 3s of t=120..360 count; 12 at t=480 counts again at once.
    assert loads == [2, 10, 10, 10, 10, 10, 3, 3, 12, 12]


def test_keys_are_independent_and_forgotten_after_the_window():
    r = rec(Capacity(calibrate=False, per_replica=1.0, max_replicas=100, scale_down_window=300), 60.0)
    high = np.full((1, 12), 9.0)
    low = np.full((1, 12), 1.0)
    r.update(0.0, 0.0, STEP, ["a"], high)
    out = r.update(60.0, 60.0, STEP, ["a", "b"], np.concatenate([high * 0 + 4, low]))
    assert out.load.tolist() == [9.0, 1.0]  # b does not inherit a's history
    # a is absent from t=120 on; back at t=200 its 9 (t=0, 60: 4) still counts, ...
    assert r.update(200.0, 200.0, STEP, ["a"], low).load.tolist() == [9.0]
    # ... and after 300 s without it, b is forgotten: a fresh low value stands alone.
    assert r.update(400.0, 400.0, STEP, ["b"], low * 0.5).load.tolist() == [0.5]
    assert set(r._history) == {"a", "b"}
    r.update(1000.0, 1000.0, STEP, ["c"], low)
    assert set(r._history) == {"c"}  # the memory stays bounded by the series seen in the window


def test_zero_window_follows_the_forecast():
    r = rec(Capacity(calibrate=False, per_replica=2.0, max_replicas=10, scale_down_window=0), 60.0)
    assert r.update(0.0, 0.0, STEP, ["k"], np.full((1, 3), 9.0)).desired.tolist() == [5]
    assert r.update(60.0, 60.0, STEP, ["k"], np.full((1, 3), 3.0)).desired.tolist() == [2]


def test_no_series_is_an_empty_recommendation():
    out = rec(Capacity(calibrate=False, per_replica=1.0, max_replicas=3)).update(0.0, 0.0, STEP, [], np.empty((0, 12)))
    assert isinstance(out, Recommendation) and out.desired.shape == out.load.shape == out.raw_load.shape == (0,)


@pytest.mark.parametrize("kwargs, message", [
    ({"per_replica": 0.0}, "per_replica must be > 0"),
    ({"per_replica": float("nan")}, "per_replica must be > 0"),
    ({"quantile": 1.0}, "quantile must be between 0 and 1"),
    ({"lead_time": -1.0}, "lead_time must be >= 0"),
    ({"scale_down_window": float("inf")}, "scale_down_window must be >= 0"),
    ({"min_replicas": -1}, "min_replicas must be >= 0"),
    ({"min_replicas": 5, "max_replicas": 4}, "max_replicas must be >= 1 and >= min_replicas (5)"),
    ({"min_replicas": 0, "max_replicas": 0}, "max_replicas must be >= 1"),
])
def test_capacity_rejects_impossible_values(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Capacity(**{"per_replica": 1.0, "max_replicas": 10, **kwargs})


@pytest.mark.parametrize("keys, forecast, message", [
    (["a"], np.ones((2, 12)), "forecast must be"),
    (["a"], np.ones((1, 0)), "forecast must be"),
    (["a"], np.array([[1.0, np.nan]]), "NaN or Inf"),
])
def test_update_rejects_malformed_forecasts(keys, forecast, message):
    with pytest.raises(ValueError, match=message):
        rec(Capacity(calibrate=False, per_replica=1.0, max_replicas=3)).update(0.0, 0.0, STEP, keys, forecast)


# -- live calibration (forecast_loop.capacity.Calibration): adaptive conformal inference --------------------

def one_point(lead_time: float = 0.0, **kwargs) -> Capacity:
    """lead_time 0 and a 1-s interval at the origin: each recommendation covers the first point only."""
    return Capacity(per_replica=1.0, max_replicas=1000, lead_time=lead_time, scale_down_window=0, **kwargs)


def run_stream(actuals: np.ndarray, median: float, quantile_value: float, q: float = 0.9):
    """One recommendation per step from a constant forecast; the actual of each step arrives at the next."""
    r = Recommender(one_point(quantile=q), interval=1.0)
    history = np.full(len(actuals) + 1, np.nan)
    raws, factors = [], []
    for j in range(len(actuals) + 1):
        origin = j * STEP
        history[j - 1] = actuals[j - 1] if j else np.nan  # the step ending at `origin` is known now
        out = r.update(origin, origin, STEP, ["k"], np.full((1, 12), quantile_value), np.full((1, 12), median),
                       history[max(0, j - 24): j][None] if j else np.empty((1, 0)))
        raws.append(out.raw_load[0])
        factors.append(out.factor[0])
    return r.calibration("k"), np.array(raws[:-1]), np.array(factors)


@pytest.mark.parametrize("distance, factor", [
    (1.0, np.log(10) / 1.0),   # too narrow: the model says median + 1, the true p90 is median + ln 10
    (4.0, np.log(10) / 4.0),   # too wide
])
def test_calibration_converges_to_the_quantile_of_the_actuals(distance, factor):
    # actual = 1 + Exp(1): its 0.9 quantile is 1 + ln 10, whatever the model says
    actuals = 1.0 + np.random.default_rng(7).exponential(1.0, 20_000)
    state, raws, factors = run_stream(actuals, median=1.0, quantile_value=1.0 + distance)
    assert state.outcomes == len(actuals)
    exceeded = actuals > raws
    assert state.exceeded == int(exceeded.sum())
    # ACI's identity while the factor stays inside its bounds: log factor = gamma * sum(exceeded - 0.1)
    assert np.isclose(state.log_factor, state.GAMMA * (exceeded.sum() - 0.1 * len(actuals)))
    assert abs(exceeded.mean() - 0.1) <= abs(np.log(state.FACTOR_MAX)) / (state.GAMMA * len(actuals))
    assert abs(exceeded[-10_000:].mean() - 0.1) < 0.01
    # and the factor it settles at puts the recommendation at the actuals' own 0.9 quantile
    assert np.exp(np.log(factors[-10_000:]).mean()) == pytest.approx(factor, rel=0.1)


def test_calibration_is_bounded_and_starts_from_the_models_quantile():
    state, raws, factors = run_stream(np.full(500, 100.0), median=1.0, quantile_value=2.0)  # always exceeded
    assert factors[0] == 1.0 and raws[0] == 2.0
    assert state.factor == pytest.approx(state.FACTOR_MAX)
    assert raws[-1] == pytest.approx(1.0 + state.FACTOR_MAX)
    state, raws, _ = run_stream(np.zeros(2000), median=1.0, quantile_value=2.0)  # never exceeded
    assert state.factor == pytest.approx(state.FACTOR_MIN)
    assert raws[-1] == pytest.approx(1.0 + state.FACTOR_MIN)


def test_a_forecast_at_its_median_is_left_alone():
    state, raws, _ = run_stream(np.full(300, 100.0), median=5.0, quantile_value=5.0)  # a "perfect" forecast
    assert state.factor == pytest.approx(state.FACTOR_MAX) and (raws == 5.0).all()


def test_the_outcome_is_the_share_of_points_used_exceeded_scored_once_when_their_steps_have_ended():
    # lead 300 s + interval 60 s from the origin: two points, the steps ending at +300 and +600
    r = Recommender(one_point(lead_time=300.0), interval=60.0)
    median, upper = np.full((1, 12), 10.0), np.full((1, 12), 20.0)
    out = r.update(0.0, 0.0, STEP, ["k"], upper, median, np.array([[10.0]]))
    assert out.raw_load.tolist() == [20.0] and out.factor.tolist() == [1.0]
    r.update(60.0, 0.0, STEP, ["k"], upper, median, np.array([[10.0]]))  # same origin: still one recommendation
    state = r.calibration("k")
    assert list(state.pending) == [0.0]
    r.update(360.0, 300.0, STEP, ["k"], upper, median, np.array([[10.0, 5.0]]))  # +600 not ended: not scored
    assert state.outcomes == 0
    # the steps ending at +300 (5) and +600 (25) against 20 each: half of the points used exceeded
    r.update(660.0, 600.0, STEP, ["k"], upper, median, np.array([[10.0, 5.0, 25.0]]))
    assert state.outcomes == 1 and state.exceeded == 0.5
    assert state.log_factor == pytest.approx(state.GAMMA * (0.5 - 0.1))
    # the origin 300 covered +600 and +900; a gap (NaN) at +900 gives no outcome at all
    r.update(960.0, 900.0, STEP, ["k"], upper, median, np.array([[10.0, 5.0, 25.0, np.nan]]))
    assert (state.outcomes, state.exceeded) == (1, 0.5) and 300.0 not in state.pending
    # factor > 1 now: median + factor * (upper - median)
    out = r.update(1000.0, 900.0, STEP, ["k"], upper, median, np.array([[np.nan]]))
    assert out.raw_load[0] == pytest.approx(10.0 + 10.0 * np.exp(state.GAMMA * 0.4))
    assert out.factor[0] == pytest.approx(np.exp(state.GAMMA * 0.4))


def test_calibration_is_per_series_and_forgotten_when_a_series_is_gone():
    r = Recommender(one_point(), interval=1.0)
    median, upper = np.full((2, 12), 1.0), np.full((2, 12), 2.0)
    r.update(0.0, 0.0, STEP, ["a", "b"], upper, median, np.empty((2, 0)))
    r.update(STEP, STEP, STEP, ["a", "b"], upper, median, np.array([[9.0], [0.0]]))
    assert r.calibration("a").factor > 1 > r.calibration("b").factor
    r.update(STEP + r.CALIBRATION_MEMORY + 1, STEP, STEP, ["a"], upper[:1], median[:1], np.array([[9.0]]))
    assert r.calibration("b") is None and r.calibration("a").outcomes == 1


@pytest.mark.parametrize("median, actual, message", [
    (None, np.ones((1, 1)), "needs the median"),
    (np.ones((1, 12)), None, "needs the median"),
    (np.ones((1, 11)), np.ones((1, 1)), "median must be finite and shaped"),
    (np.full((1, 12), np.nan), np.ones((1, 1)), "median must be finite"),
    (np.ones((1, 12)), np.ones(3), "actual must be"),
])
def test_calibration_rejects_missing_or_malformed_inputs(median, actual, message):
    with pytest.raises(ValueError, match=message):
        Recommender(one_point(), 1.0).update(0.0, 0.0, STEP, ["k"], np.ones((1, 12)), median, actual)


def test_calibration_is_on_by_default_and_needs_a_quantile_above_the_median():
    assert Capacity(per_replica=1.0, max_replicas=3).calibrate is True
    with pytest.raises(ValueError, match="calibrate needs a quantile above the median"):
        Capacity(per_replica=1.0, max_replicas=3, quantile=0.5)
    assert Capacity(per_replica=1.0, max_replicas=3, quantile=0.5, calibrate=False).quantile == 0.5


@pytest.mark.parametrize("load, per_replica, lo, hi, trigger", [
    (6.5, 1.0, 1, 10, 7.0),      # 6.5 replicas' worth: the trigger reports 7 whole replicas
    (130.0, 20.0, 1, 10, 140.0),
    (999.0, 20.0, 1, 10, 200.0),  # clamped like desired
    (0.0, 20.0, 2, 10, 40.0),     # the floor too
    (0.0, 20.0, 0, 10, 0.0),
])
def test_the_trigger_reports_the_recommendation_in_whole_replicas(load, per_replica, lo, hi, trigger):
    # the HPA's AverageValue rule on it gives back `desired`, and its tolerance (|value / (target * current)
    # - 1| <= 0.1 keeps current; kubernetes replica_calculator.go) compares desired / current replicas
    r = rec(Capacity(calibrate=False, per_replica=per_replica, min_replicas=lo, max_replicas=hi))
    out = r.update(0.0, 0.0, STEP, ["k"], np.array([[load]]))
    assert out.trigger_load.tolist() == [trigger]
    assert out.trigger_load[0] / per_replica == out.desired[0]
