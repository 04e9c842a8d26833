"""Benchmarks: commands that print figures, each beside a reference measured in the same run."""
