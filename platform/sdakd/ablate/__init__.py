"""Named ablation grids (`ablations/*.yaml`): load and validate (grid.py) and report (report.py); Ray Tune runs the
pending cells from `sdakd.ray_adapter.ablate`."""
