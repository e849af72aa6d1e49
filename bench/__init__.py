"""Benchmarks of garden-trio side by side with runc, crun, Docker and Podman (`just bench`).

`python -m bench --help` lists the options; docs/performance.md has the results, how to
reproduce them and where the time goes.
"""
