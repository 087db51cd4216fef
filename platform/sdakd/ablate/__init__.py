"""Named ablation grids (`ablations/*.yaml`): load and validate, run the pending cells on Ray Tune, report."""
