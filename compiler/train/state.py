"""The resume state (checkpoints/state.json, and its copy inside every checkpoint) as a typed record,
and the resume decision as a pure function.

    ResumeState.from_json(d) / .to_json()   the record <-> the JSON object the run directory holds
    where_to_start(state, phase_epochs)     -> Start: which phase to run, from which epoch, and how

One record, one reader: the trainer, the recorder (callbacks.py) and the ensemble read the fields of
this class, not keys of a dict. `from_json` accepts what older kspec versions wrote (missing keys take
the defaults) and refuses values of the wrong type (a damaged file is no resume state at all), so the
code after it never meets a string where it counts epochs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Limits on what a state file may say before anything is done with it (the file is input).
MAX_EPOCHS = 10**9
MAX_CALLBACKS = 1000


@dataclass
class ResumeState:
    """What a checkpoint holds: how far the run got, in which phase, and the monitored best so far."""

    epoch_done: int = 0                  # epochs finished (the next one to run is this number)
    phase: int = 0                       # index into the run's phases
    phase_name: str | None = None
    phase_start: int = 0                 # the global epoch the phase began at
    phase_epochs: int | None = None      # the phase's length as the spec said when it was written
    phase_finished: bool = False         # the phase ended (all its epochs, or EarlyStopping)
    finished: bool = False               # the run wrote its final artifacts
    monitor: str | None = None
    save_best: bool = False
    best_value: float | None = None
    best_epoch: int | None = None
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)   # the spec's stateful callbacks
    time: str = ""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["time"] = self.time or time.strftime("%Y-%m-%dT%H:%M:%S")
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> ResumeState | None:
        """The record of a parsed state file; None for no file or a damaged one."""
        if not isinstance(data, Mapping):
            return None
        try:
            callbacks = data.get("callbacks") or {}
            if not isinstance(callbacks, Mapping) or len(callbacks) > MAX_CALLBACKS:
                return None
            return cls(
                epoch_done=_count(data.get("epoch_done", 0)),
                phase=_count(data.get("phase", 0)),
                phase_name=_text(data.get("phase_name")),
                phase_start=_count(data.get("phase_start", 0)),
                phase_epochs=_count(data["phase_epochs"]) if data.get("phase_epochs") is not None else None,
                phase_finished=_flag(data.get("phase_finished", False)),
                finished=_flag(data.get("finished", False)),
                monitor=_text(data.get("monitor")),
                save_best=_flag(data.get("save_best", False)),
                best_value=_number(data.get("best_value")),
                best_epoch=_count(data["best_epoch"]) if data.get("best_epoch") is not None else None,
                callbacks={str(k): dict(v) for k, v in callbacks.items() if isinstance(v, Mapping)},
                time=str(data.get("time") or ""),
            )
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Start:
    """Where a (fresh or resumed) run starts."""

    phase: int                                   # the first phase to run (len(phases): nothing left)
    start: int                                   # the global epoch that phase began (or begins) at
    done: int                                    # epochs already finished
    fresh_phase: bool                            # apply the phase's trainable/optimizer (it begins now)
    restore: dict[str, dict] | None = None       # callback counters to put back (continuing a phase)

    @property
    def nothing_to_do(self) -> bool:
        return self.phase < 0


def where_to_start(state: ResumeState | None, phase_epochs: Sequence[int]) -> Start:
    """The resume decision, from the state alone.

    - no state: phase 0 at epoch 0;
    - a finished run: nothing to do (phase -1);
    - the phase in the state ended (its flag, or all its epochs as the spec now says, or a phase the
      spec no longer has): the next phase, beginning at `epoch_done`;
    - otherwise: continue that phase where it stopped, putting back the callbacks' counters.
    """
    if state is None:
        return Start(phase=0, start=0, done=0, fresh_phase=True)
    done = state.epoch_done
    if state.finished:
        return Start(phase=-1, start=done, done=done, fresh_phase=False)
    index, start = state.phase, state.phase_start
    if state.phase_finished or index >= len(phase_epochs) or done >= start + phase_epochs[index]:
        return Start(phase=index + 1, start=done, done=done, fresh_phase=True)
    return Start(phase=index, start=start, done=done, fresh_phase=False, restore=dict(state.callbacks))


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_EPOCHS \
            or value != int(value):
        raise ValueError(f"not a count: {value!r}")
    return int(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"not a boolean: {value!r}")
    return value


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a string: {value!r}")
    return value


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number: {value!r}")
    number = float(value)
    return number if not math.isnan(number) else None
