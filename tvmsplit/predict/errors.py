"""The predictor's errors (shared by the dataset and predictor modules)."""
from __future__ import annotations

from ..errors import TvmsplitError


class PredictorError(TvmsplitError):
    """A predictor or profile dataset cannot be used; the message says which command fixes it."""


class PredictorMissingError(PredictorError):
    """No predictor (or dataset) file where one was expected."""


class PredictorCorruptError(PredictorError):
    """The file exists but is not a readable predictor (or dataset)."""


class PredictorVersionError(PredictorError):
    """The file was written with another schema version."""


class PredictorTargetError(PredictorError):
    """The predictor (or dataset) was made for another target than the one asked for."""
