"""Error types. Every error a user can cause derives from WeldfilmError and says what to do."""


class WeldfilmError(Exception):
    """Base class: the CLI prints the message and exits with status 2 (no traceback)."""


class ConfigError(WeldfilmError):
    """A config key or value is wrong."""


class DataError(WeldfilmError):
    """A run, file or manifest of the data root is missing or broken."""


class BackboneError(WeldfilmError):
    """A backbone directory, checkpoint or tokenizer is missing or inconsistent."""


class CheckpointError(WeldfilmError):
    """A checkpoint or results file is missing or corrupt."""


def data_error(run_id: str, path, problem: str, hint: str = "") -> DataError:
    """Build the one error format for bad data: run id, file, problem, what to do."""
    msg = f"run {run_id}: {path}: {problem}"
    if hint:
        msg += f" ({hint})"
    return DataError(msg)
