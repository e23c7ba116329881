"""One thin module per DVC stage: read inputs, call `kd`, write outputs, return metrics.

Each is a `kd` subcommand (kd/cli/stages.py); the library they call is the `kd` package.
"""
