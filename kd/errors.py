"""User-facing errors.

Anything a user can cause (a bad param, a missing file, a corrupt shard) raises a subclass of
`KDError` whose message names the offending key, file, column or row. The CLI turns it into
one line on stderr and exit status 2; library code never calls `exit()`.
"""


class KDError(Exception):
    """A mistake in the user's params, data or artifacts: reported as one line, exit 2."""

    exit_code = 2


class ConfigError(KDError):
    """params.yaml is missing, malformed or invalid."""


class DataError(KDError):
    """An input data file is missing or does not meet the prepared-data contract."""


class ArtifactError(KDError):
    """A stage output (weights, model.json, shard, manifest) is missing or corrupt."""
