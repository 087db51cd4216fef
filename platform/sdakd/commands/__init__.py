"""The command families of `sdakd` (cli.py assembles them)."""
