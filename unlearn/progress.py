"""What a long stage shows while it runs: a log line when it starts (not when it ends) and a progress bar over its
parts (tqdm; hidden where stderr is not a terminal, as in tests and batch jobs)."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from tqdm.auto import tqdm

log = logging.getLogger("unlearn")
T = TypeVar("T")


class Stages:
    """A bar over a known number of named parts of one stage (`desc`), each logged as it starts and timed as it
    ends: `with Stages("evaluation", 3) as s: s.run("the original", lambda: ...)`."""

    def __init__(self, desc: str, total: int):
        self.desc, self.total = desc, total

    def __enter__(self) -> "Stages":
        self.bar = tqdm(total=self.total, desc=self.desc, leave=False, disable=None)
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def run(self, what: str, work: Callable[[], T]) -> T:
        self.bar.set_postfix_str(what, refresh=True)
        with stage(f"{self.desc}: {what}"):
            result = work()
        self.bar.update()
        return result


@contextmanager
def stage(what: str) -> Iterator[None]:
    """Log `what` when it starts, and how long it took when it ends."""
    log.info("%s ...", what)
    start = time.perf_counter()
    yield
    log.info("%s: done in %.1f s", what, time.perf_counter() - start)
