"""perf-predictor's KServe custom predictor: forecasts of service metrics over the Open Inference Protocol."""
