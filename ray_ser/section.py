"""The base of every experiment-config section: each stage's config class in its own package derives from it, so
every section refuses unknown keys and documents its fields by their docstrings the same way."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every section: unknown keys are refused; each field's docstring is its documentation."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)
