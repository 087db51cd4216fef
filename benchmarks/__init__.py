"""Speed and cost benchmarks; each module runs as `python -m benchmarks.<name>` and records into RESULTS.md."""
