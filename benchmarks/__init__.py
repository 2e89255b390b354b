"""Benchmarks of jaa-gateway against its floor and a Node-RED peer: `python -m benchmarks.run`."""
