"""The music / speech / silence gate: what each window is before anyone asks which genre.

Every window is judged one of three kinds before its genre probabilities are used:

* **silence** -- the RMS level of the window's newest hop (the audio this window adds to the
  timeline) is below ``silence_dbfs``: digital silence or low-level noise, judged by energy alone;
* **speech** -- not silent, and the speech detector's probability for the whole window is at least
  ``speech_threshold``;
* **music** -- everything else. Only music windows carry genre evidence.

Speech and silence show on the timeline and in messages as the labels
:data:`stream_server.messages.SPEECH` and :data:`~stream_server.messages.SILENCE`.

Levels are in dBFS: ``10 * log10(mean(x ** 2))`` for samples ``x`` in ``[-1, 1]``, so a full-scale
square wave is 0 dBFS and a full-scale sine about -3 dBFS; all-zero audio is
:data:`LEVEL_FLOOR_DBFS`.

The speech detector is any ``torch.nn.Module`` whose ``forward(wave)`` takes ``(batch, samples)``
float32 windows at the genre model's sample rate and returns ``(batch,)`` speech probabilities in
``[0, 1]``. It is plugged in as :attr:`stream_server.inference.model.LoadedModel.speech_detector`
(:func:`stream_server.inference.loading.with_speech_detector`); without one no window is judged
speech.

Pure functions on tensors and arrays, with a batch axis; no I/O.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from stream_server.config import GateParams

__all__ = [
    "KIND_NAMES",
    "LEVEL_FLOOR_DBFS",
    "MUSIC",
    "SILENCE",
    "SPEECH",
    "GateParams",
    "Kind",
    "judge",
]

#: The kind codes :func:`judge` returns (int8).
MUSIC: Final = 0
SPEECH: Final = 1
SILENCE: Final = 2
Kind = Literal[0, 1, 2]

#: Names of the kinds, indexed by code.
KIND_NAMES: tuple[str, str, str] = ("music", "speech", "silence")

#: Level, in dBFS, of all-zero audio: the lowest level
#: :func:`stream_server.inference.levels.levels_dbfs` returns.
LEVEL_FLOOR_DBFS: Final = -120.0


def judge(
    level_dbfs: npt.ArrayLike, speech_prob: npt.ArrayLike, params: GateParams
) -> npt.NDArray[np.int8]:
    """The kind of each window from its level and its speech probability.

    Args:
        level_dbfs: ``(batch,)`` levels of the windows' newest hops, dBFS (or a scalar).
        speech_prob: ``(batch,)`` speech probabilities ``0..1`` (or a scalar; ``0`` when there
            is no speech detector).
        params: Thresholds; with ``enabled`` off every window is :data:`MUSIC`.

    Returns:
        int8 codes (:data:`MUSIC`, :data:`SPEECH`, :data:`SILENCE`) of the broadcast shape.
        Silence wins over speech: a silent window is silence whatever its speech probability.
    """
    level = np.asarray(level_dbfs, dtype=np.float64)
    speech = np.asarray(speech_prob, dtype=np.float64)
    shape = np.broadcast_shapes(level.shape, speech.shape)
    kinds = np.full(shape, MUSIC, dtype=np.int8)
    if not params.enabled:
        return kinds
    kinds[np.broadcast_to(speech >= params.speech_threshold, shape)] = SPEECH
    kinds[np.broadcast_to(level < params.silence_dbfs, shape)] = SILENCE
    return kinds
