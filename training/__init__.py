"""Training: data sources -> the shared feature transform -> a global quantile model -> a model directory."""
