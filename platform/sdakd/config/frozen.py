"""The base of every config section."""

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    # no inf or nan: YAML reads `.inf` and `.nan` as floats, and no field means either
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
