"""The forecast loop: PromQL history -> the served model (v2 protocol) -> forecast series on /metrics.

`python -m forecast_loop --config FILE`. Every interval each target's query is read over the last W
steps, every label set it returns is forecast by the model over KServe's v2 REST protocol, and the
quantiles are published at a few horizons, with the maximum and minimum over the whole horizon, the
thresholds the breach alerts compare them to, and the live accuracy of earlier forecasts.
"""
