"""Typed, validated parameters.

Every pipeline's parameters are a pydantic model. Kedro 1.7 instantiates a node's
argument annotated with such a model from ``params:<key>`` before any node runs, so a
wrong type, a missing key or an unknown key fails at once, naming the key.
"""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base for parameter models: unknown keys are errors, values are not coerced silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def needs(self, block: str) -> list:
        """What a run with this block needs and cannot make itself (``params/needs.py``
        records), ``block`` being the dotted name the run knows it by; none by default."""
        return []
