"""Ray at the edge, in one layer: the only package that imports `ray` (Train and Tune).

- `cluster`: which Ray to join, and where Ray keeps results (the storage root).
- `train`: `sdakd train --workers N` (TorchTrainer, DDP, checkpoints that survive a lost worker).
- `trial`: a multi-worker search trial (a TorchTrainer inside a Tune trial).
- `search`: `sdakd search` (Tune + Optuna + ASHA over a named space).
- `ablate`: `sdakd ablate` (a grid's cells as Tune trials).

Everything they run is Ray-free and lives below: the run routine (`sdakd.pipeline`), the staged trial and prefix
cache (`sdakd.search`), the grid (`sdakd.ablate`); MLflow is `sdakd.tracking`'s. Import the module you need.
"""
