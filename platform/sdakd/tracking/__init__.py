"""MLflow adapter: the only package that imports mlflow. Nested runs, params, tags, metrics and artifacts.

`store` resolves and checks the tracking URI and finds parent runs; `run` logs one trial or grid cell
(`tracked_run` + the `TrackedRun` engine callbacks); `search` logs a search's trials from its driver; `plots` draws
the pictures each run logs. Import the module you
need: `sdakd ui` wants the store without torch.
"""
