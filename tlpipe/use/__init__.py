"""Using a trained model: metrics and plot data, the predictions table, predict, export, report.

Nothing here imports tlpipe.train: a model is used through tlpipe.model alone.
"""
