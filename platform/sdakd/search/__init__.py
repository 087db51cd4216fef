"""Search: named spaces (space.py) -> Ray Tune + Optuna + ASHA (runner.py), one trial (trial.py), and the
stage-prefix cache (prefix.py). Only runner.py imports Ray; import it explicitly, this package imports nothing."""
