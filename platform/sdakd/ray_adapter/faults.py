"""Fault injection for the failure tests: one worker dies once, mid-run, like a lost node.

SDAKD_FAIL_AT_STEP=k makes the last rank exit after global step k; SDAKD_FAIL_MARKER names a file that records
the failure, so the restarted worker group runs through. Read on the driver, which passes it to the workers
(their environment is the Ray node's, not the shell's).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from sdakd.engine import Callbacks, Stage
from sdakd.errors import SdakdError

STEP_ENV, MARKER_ENV = "SDAKD_FAIL_AT_STEP", "SDAKD_FAIL_MARKER"


def fault_from_env() -> dict[str, str] | None:
    step, marker = os.environ.get(STEP_ENV), os.environ.get(MARKER_ENV)
    if step is None:
        return None
    if not step.isdigit() or not marker:
        raise SdakdError(f"{STEP_ENV}={step!r} needs a step number >= 0 and {MARKER_ENV}=<file> (so it fails once)")
    return {"step": step, "marker": str(Path(marker).absolute())}


class FailOnce(Callbacks):
    def __init__(self, step: str, marker: str) -> None:
        self.step, self.marker = int(step), Path(marker)

    def on_log(self, stage: Stage, global_step: int, metrics: Mapping[str, float]) -> None:
        if global_step >= self.step and not self.marker.exists():
            self.marker.touch()
            print(f"fault injection: worker exits after global step {global_step}", flush=True)
            os._exit(1)  # no exception, no clean-up: the process is simply gone, as on a lost node
