"""Search pieces without Ray: named spaces (space.py), one staged trial (trial.py), the stage-prefix cache
(prefix.py) and a finished search's summary (summary.py). Ray Tune drives them from `sdakd.ray_adapter.search`;
import the module you need, this package imports nothing."""
