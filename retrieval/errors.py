"""Named errors of the retrieval package (ValueError and TypeError are used for bad arguments)."""

from __future__ import annotations

__all__ = ["ArtifactError", "ModelFitError", "RetrievalError"]


class RetrievalError(Exception):
    """Base class of the retrieval package's domain errors."""


class ModelFitError(RetrievalError, RuntimeError):
    """Training diverged (the loss or the embeddings became NaN or infinite)."""


class ArtifactError(RetrievalError, OSError):
    """A saved retrieval artifact is missing a file, has another format version, or is inconsistent."""
