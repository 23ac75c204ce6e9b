"""Where an image build is, read from its log: its phase, and how far through it (n of N)."""

from __future__ import annotations

import re

from pydantic import BaseModel

#: The time stamp each log line starts with ("[mmm:ss] ").
_STAMP = re.compile(r"^\[\s*\d+:\d\d\] ")
#: Log lines that start a phase, in the order a build meets them (a pattern, the phase).
_PHASES = (
    (re.compile(r"^\$ mmdebstrap "), "preparing the base system"),
    (re.compile(r"^I: running apt-get update"), "resolving packages"),
    (re.compile(r"^I: downloading packages"), "downloading packages"),
    (re.compile(r"^I: (extracting archives|installing)"), "installing packages"),
    (re.compile(r"^stage (\w+): cached \("), "stage from the cache"),
    (re.compile(r"pip install"), "installing Python packages"),
    (re.compile(r"^\$ mksquashfs "), "writing the SquashFS"),
    (re.compile(r"^(\$ umoci |layer of the changes)"), "writing the OCI image"),
    (re.compile(r"^built in "), "done"),
    (re.compile(r"^BUILD FAILED"), "failed"),
    (re.compile(r"^BUILD CANCELLED"), "cancelled"),
)
#: apt's count of what it installs ("0 upgraded, 112 newly installed, ..."): N of downloading.
_NEWLY = re.compile(r"\b(\d+) newly installed\b")
#: apt fetching its n-th package.
_GET = re.compile(r"^Get:(\d+) ")
#: A build step starting (plan.steps_script announces each).
_STEP = re.compile(r"^### step (\d+)/(\d+):")


class BuildProgress(BaseModel):
    """A build's phase and, where the log tells, how far through it: ``done`` of ``total``
    (packages downloaded, steps run)."""

    phase: str = "starting"
    done: int | None = None
    total: int | None = None

    def advance(self, text: str) -> bool:
        """Read more of the log (whole lines, time stamps included); whether what it says
        (``text``) changed."""
        before = self.text
        for raw in text.splitlines():
            self._read(_STAMP.sub("", raw, count=1))
        return self.text != before

    def _read(self, line: str) -> None:
        if (found := _STEP.match(line)) and "pip install" not in line:
            self.phase, self.done, self.total = "running the steps", *map(int, found.groups())
            return
        if found := _NEWLY.search(line):
            self.total = int(found.group(1))
            return
        if (found := _GET.match(line)) and self.phase == "downloading packages":
            self.done = int(found.group(1))  # (apt-get update's Get lines are indexes)
            return
        for pattern, phase in _PHASES:
            if found := pattern.search(line):
                self.phase = f"{found.group(1)} {phase}" if phase.startswith("stage") else phase
                self.done = 0 if phase == "downloading packages" else None
                if phase != "downloading packages":
                    self.total = None
                return

    @property
    def text(self) -> str:
        """One line for a person: the phase, and n/N where known."""
        if self.done is not None and self.total:
            return f"{self.phase} {self.done}/{self.total}"
        return self.phase
