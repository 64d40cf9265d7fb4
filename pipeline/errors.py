"""Errors users are expected to see: each names the file or URI and the problem."""

from __future__ import annotations

from pipeline.io.remote import redact_text  # signed URLs and env credentials never shown


class M2CDError(Exception):
    """Base for expected failures: the CLI prints the message without a traceback."""


class InputError(M2CDError):
    """A bad input: missing, unreadable, wrong shape or bands, grids that do not overlap."""

    def __init__(self, source: str, problem: str):

        self.source = redact_text(source)
        self.problem = redact_text(problem)
        super().__init__(f"{self.source}: {self.problem}")


class ConfigError(M2CDError):
    """A config value that is not allowed; the message names the field and the allowed values."""


class OutputExistsError(M2CDError):
    """A finished product exists and --overwrite was not given."""


class OutputError(M2CDError):
    """The output location cannot take the products (disk full, quota, read-only); finished blocks
    are kept, so the same command resumes once the problem is fixed."""


class NoCRSWarning(UserWarning):
    """A raster without CRS/georeferencing, read in pixel coordinates. A category of its own so a
    chip dataset of plain images (OMBRIA: 1,388 PNGs) says it once, not once per file."""
