"""Progress of long loops: a bar on terminals, a plain line at least once a minute elsewhere.

Training epochs and certification runs last minutes to days. On a terminal a tqdm bar shows
progress and ETA. In a log file (``nohup``, a cluster job, ``> log``) a bar is either absent
or one endless line of carriage returns, so there :class:`Progress` prints a plain line
instead, on the first update after each ``interval`` (60 s) and when it closes::

    certify certify_gaussian.tsv: 120/500 img (24%), 2.44 s/img, ETA 0:15:27

The rate counts only the work done in this process (a resumed run's earlier rows are not
part of it), so the ETA stays honest after a resume. Lines are emitted from ``update``:
a loop whose single step outlasts the interval reports once per step.

One image at a large N (CERTIFY at N = 100,000 takes minutes on a CPU) is a long loop too:
inside :func:`show_samples` the vote counter (:mod:`smoothmix.votes`) advances a bar by the
noisy copies it draws, so ``Smooth.certify(..., progress=True)`` shows them. The counter only
reads :func:`sample_counter`; it draws the same noise with or without a bar.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TextIO

__all__ = ["INTERVAL_S", "Progress", "format_duration", "sample_counter", "show_samples"]

INTERVAL_S = 60.0


class Progress:
    """A progress reporter over ``total`` units (tqdm-like: ``update``, ``write``,
    ``set_description``, ``set_postfix``, ``close``, context manager)."""

    def __init__(
        self,
        total: int,
        *,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        disable: bool = False,
        stream: TextIO | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
    ) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.done = self._start_done = int(initial)
        self.disable = disable
        self.stream = stream if stream is not None else sys.stderr
        # Read at run time (not bound as a default) so that a test can shorten it.
        self.interval = INTERVAL_S if interval is None else interval
        self.clock = clock
        self.postfix = ""
        self._bar: Any = None
        self._start = self._last = clock()
        self._closed = False
        if disable:
            return
        if tty is None:
            tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if tty:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=desc, unit=unit,
                             file=self.stream, dynamic_ncols=True)
        elif self.done < self.total:
            self._emit()  # say that the stage started (and where a resumed run stands)

    # -- tqdm's interface -----------------------------------------------------------------

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif not self.disable and self.clock() - self._last >= self.interval:
            self._emit()

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def write(self, text: str) -> None:
        """Print a line (stdout) without breaking the bar."""
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif not self.disable and self.done > self._start_done:
            self._emit()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the plain line -------------------------------------------------------------------

    def line(self) -> str:
        """``desc: done/total unit (pct), rate unit/s, ETA h:mm:ss[, postfix]``."""
        now = self.clock()
        elapsed = now - self._start
        worked = self.done - self._start_done
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.desc + ': ' if self.desc else ''}{self.done}/{self.total} {self.unit} " \
               f"({pct:.0f}%)"
        if worked > 0 and elapsed > 0:
            rate = worked / elapsed
            eta = max(self.total - self.done, 0) / rate
            text += f", {_rate(rate, self.unit)}, ETA {format_duration(eta)}"
        else:
            text += ", ETA unknown"
        if self.postfix:
            text += f", {self.postfix}"
        return text

    def _emit(self) -> None:
        self._last = self.clock()
        print(self.line(), file=self.stream, flush=True)


def _rate(rate: float, unit: str) -> str:
    if rate >= 1 or rate == 0:
        return f"{rate:.3g} {unit}/s"
    return f"{1 / rate:.3g} s/{unit}"


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (days as ``Nd h:mm:ss``)."""
    s = int(round(seconds))
    days, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{days}d " if days else "") + f"{h}:{m:02d}:{s:02d}"


# The bar the vote counter advances while :func:`show_samples` is open (None: no bar). A
# context variable, so that threads and tasks each see their own.
_SAMPLES: ContextVar[Callable[[int], None] | None] = ContextVar("smoothmix_samples",
                                                                 default=None)


@contextlib.contextmanager
def show_samples(show: bool, total: int, desc: str = "certify") -> Iterator[None]:
    """While open (and ``show``), a :class:`Progress` over ``total`` noise samples that
    :func:`smoothmix.votes.count_votes` advances by each block it draws; closed on exit (an
    early abstain closes it short of ``total``)."""
    if not show:
        yield
        return
    with Progress(total, desc=desc, unit="samples") as bar:
        token = _SAMPLES.set(bar.update)
        try:
            yield
        finally:
            _SAMPLES.reset(token)


def sample_counter() -> Callable[[int], None] | None:
    """What to call with each block's number of draws: the open :func:`show_samples` bar's
    ``update``, or None outside one."""
    return _SAMPLES.get()
