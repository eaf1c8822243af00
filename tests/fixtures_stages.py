"""Stages for tests that must pickle into ``generate``'s worker processes (importable, unlike a test's locals)."""

from __future__ import annotations

import time

from relight_stream.pipeline.stage import Stage


class Hold(Stage):
    """Touches ``marker`` and sleeps ``seconds`` on the batch that starts with ``key`` (a signal lands there)."""

    name = "hold"

    def __init__(self, key: str, marker: str, seconds: float) -> None:
        self.key, self.marker, self.seconds = key, marker, seconds

    def process(self, batch):
        if batch.keys[0] == self.key:
            open(self.marker, "w").close()
            time.sleep(self.seconds)
        return batch


class NoModel(Stage):
    """A stage whose model cannot load: ``setup`` raises, as a missing checkpoint would."""

    name = "nomodel"

    def setup(self) -> None:
        raise OSError("weights not found")

    def process(self, batch):
        return batch
