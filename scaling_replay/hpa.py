"""The Kubernetes HPA's replica algorithm for external AverageValue metrics, as KEDA's HPA runs it.

A KEDA trigger becomes an HPA `External` metric with an `AverageValue` target (KEDA
pkg/scalers/external_scaler.go `buildMetricSpecs` / `GetMetricTargetMili`; AverageValue is KEDA's default
metricType). The HPA controller then, every sync period (15 s by default):

- per metric, `GetExternalPerPodMetricReplicas` (kubernetes pkg/controller/podautoscaler/
  replica_calculator.go): ratio = value / (target * statusReplicas); within the tolerance (|1 - ratio| <=
  0.1) the proposal is statusReplicas, else ceil(value / target);
- takes the largest proposal over the metrics (horizontal.go `computeReplicasForMetrics`), so a forecast
  trigger next to a reactive one can only add replicas;
- with no `behavior` in the HPA (KEDA's default), `normalizeDesiredReplicas` (horizontal.go): the largest
  recommendation of the last 5 minutes (`stabilizeRecommendation`, the scale-down stabilisation), then
  clamped to [minReplicas, min(maxReplicas, max(2 * current, 4))] (`convertDesiredReplicasWithRules`,
  `calculateScaleUpLimit`: the same limit as the default scale-up policies of pkg/apis/autoscaling/v2/
  defaults.go, 4 pods or 100% per 15 s).

`HPA` holds one autoscaler's recommendation history; it is pure and never reads a clock.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

SCALE_UP_LIMIT_FACTOR = 2.0  # horizontal.go scaleUpLimitFactor
SCALE_UP_LIMIT_MINIMUM = 4.0  # horizontal.go scaleUpLimitMinimum


@dataclass(frozen=True)
class HPASettings:
    min_replicas: int = 1
    max_replicas: int = 1000
    sync_period: float = 15.0  # kube-controller-manager --horizontal-pod-autoscaler-sync-period
    tolerance: float = 0.1  # --horizontal-pod-autoscaler-tolerance
    downscale_stabilization: float = 300.0  # --horizontal-pod-autoscaler-downscale-stabilization

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, got "
                             f"{self.min_replicas}, {self.max_replicas}")
        if self.sync_period <= 0 or self.tolerance < 0 or self.downscale_stabilization < 0:
            raise ValueError("sync_period must be > 0, tolerance and downscale_stabilization >= 0")


def per_pod_proposal(value: float, target: float, status_replicas: int, tolerance: float) -> int:
    """replica_calculator.go GetExternalPerPodMetricReplicas: the replicas one AverageValue metric asks for."""
    if status_replicas > 0:
        ratio = value / (target * status_replicas)
        if abs(1.0 - ratio) <= tolerance:
            return status_replicas
    return int(math.ceil(value / target))


class HPA:
    """One HPA: `sync(now, current, metrics)` -> the replica count it sets, as its controller would."""

    def __init__(self, settings: HPASettings, now: float, current: int):
        self.settings = settings
        # horizontal.go recordInitialRecommendation: the current size counts as a recommendation at start
        self._recommendations: deque = deque([(now, current)])

    def proposal(self, current: int, metrics: list[tuple[float, float]]) -> int:
        """The largest per-metric proposal; metrics are (value, AverageValue target) pairs."""
        s = self.settings
        return max(per_pod_proposal(value, target, current, s.tolerance) for value, target in metrics)

    def sync(self, now: float, current: int, metrics: list[tuple[float, float]]) -> int:
        s = self.settings
        if current > s.max_replicas:
            return s.max_replicas
        if current < s.min_replicas:
            return s.min_replicas
        desired = self.proposal(current, metrics)
        # stabilizeRecommendation: recommendations before now - window drop out, the rest count with this one
        cutoff = now - s.downscale_stabilization
        while self._recommendations and self._recommendations[0][0] < cutoff:
            self._recommendations.popleft()
        stabilized = max([desired] + [r for _, r in self._recommendations])
        self._recommendations.append((now, desired))
        limit = int(max(SCALE_UP_LIMIT_FACTOR * current, SCALE_UP_LIMIT_MINIMUM))
        return max(s.min_replicas, min(stabilized, min(s.max_replicas, limit)))
