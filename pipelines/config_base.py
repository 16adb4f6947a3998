"""The base of every configuration model: unknown keys are errors, values are immutable, and types are
strict: ``"4"`` is not a number, ``true`` not an integer, ``"false"`` not a boolean (TOML has real types;
a value of the wrong one is a mistake to report, not to guess at)."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    # allow_inf_nan: a NaN or infinite duration, rate or score is never meant (base_s = inf made the backoff
    # NaN: thousands of reconnects a second).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
