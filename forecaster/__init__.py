"""Forecasting core shared by training and serving: the feature transform, the model and its artifacts.

The predictor imports only this package; training's data sources stay in `training`.
"""
