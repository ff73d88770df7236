"""Replays real demand through a service model under reactive (HPA) and predictive (HPA + the forecast loop's
recommendation) autoscaling, with forecasts from the real served model. See docs/autoscaling-replay.md."""
