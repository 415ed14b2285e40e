"""Exceptions that end a run with one clear message (the CLI prints it and exits 1)."""


class GpureconError(Exception):
    """Base class: a problem with the user's input, named in the message."""


class DataError(GpureconError, ValueError):
    """Bad or missing dataset input; the message names the file and field."""


class ModelError(GpureconError, ValueError):
    """An embedding model that cannot be loaded or used; the message names the checkpoint."""


class ConfigError(GpureconError, ValueError):
    """A config value the stages reject; the message names the key."""


class CacheError(GpureconError):
    """A cache entry that cannot be used or waited for; the message names the entry."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, SLURM, ``docker stop``): handled like Ctrl-C (the staging folder
    is discarded, one line), with the shell's exit status for SIGTERM (143)."""


class StorageError(GpureconError):
    """A folder the run writes into is full (ENOSPC / quota); the message names it."""
