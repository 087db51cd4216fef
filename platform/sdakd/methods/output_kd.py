"""output_kd: the student learns the teacher's output (L1, weight `loss.teacher_output.weight`) next to the GT
losses, with no adversary: no discriminator is built at all.

It keeps the three stages (identical term sets) only so that its budget and evaluation points match the others.
"""

from __future__ import annotations

from sdakd.engine.stage import Stage
from sdakd.methods.base import Method
from sdakd.methods.registry import METHODS


@METHODS.register("output_kd")
class OutputKD(Method):
    tunable = {"loss.teacher_output.weight": {"type": "loguniform", "low": 0.1, "high": 10.0}}

    def stages(self) -> list[Stage]:
        return self.three_stages({}, {}, {}, warm_d=False)
