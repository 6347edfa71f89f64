"""The simulated network between members: delay, loss, duplication, reordering, partitions.

Rules:

1. A message from ``src`` to ``dst`` is dropped when the directed link
   ``(src, dst)`` is cut (a partition), or with probability ``loss``.
2. Otherwise it is delivered after a delay drawn from the network rng: a base
   delay in ``[delay_us_min, delay_us_max]``, plus, with probability
   ``reorder``, an extra delay up to ``reorder_delay_us_max`` (so it overtakes
   nothing but is overtaken by later messages).  With probability
   ``duplicate`` a second copy is delivered with its own delay.
3. Partitions are sets of cut directed links: symmetric (both directions) or
   asymmetric (one direction only).  Partitions may overlap: a link stays cut
   until every partition that cut it has healed (``heal_links``); ``heal``
   clears them all.
4. Every draw comes from the one network rng, in the order messages are sent,
   so delivery depends on the seed alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from random import Random


@dataclass
class NetworkFaults:
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay_us_min: int = 200
    delay_us_max: int = 3_000
    reorder_delay_us_max: int = 30_000


@dataclass
class NetworkCounters:
    sent: int = 0
    delivered: int = 0
    dropped_partition: int = 0
    dropped_loss: int = 0
    duplicated: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_partition + self.dropped_loss


class SimNetwork:
    """Decides the fate of each message; the caller schedules the deliveries."""

    def __init__(self, rng: Random, faults: NetworkFaults) -> None:
        self.rng = rng
        self.faults = faults
        self.cut: dict[tuple[int, int], int] = {}  # link -> partitions cutting it
        self.counters = NetworkCounters()

    def partition(self, links: Iterable[tuple[int, int]]) -> None:
        for link in links:
            self.cut[link] = self.cut.get(link, 0) + 1

    def heal_links(self, links: Iterable[tuple[int, int]]) -> None:
        for link in links:
            count = self.cut.get(link, 0) - 1
            if count > 0:
                self.cut[link] = count
            else:
                self.cut.pop(link, None)

    def heal(self) -> None:
        self.cut.clear()

    def isolated(self, src: int, dst: int) -> bool:
        return (src, dst) in self.cut

    def send(self, src: int, dst: int, deliver: Callable[[int], None]) -> None:
        """Call ``deliver(delay_us)`` once per copy that will arrive (zero, one or two)."""
        self.counters.sent += 1
        if (src, dst) in self.cut:
            self.counters.dropped_partition += 1
            return
        faults = self.faults
        rng = self.rng
        if faults.loss and rng.random() < faults.loss:
            self.counters.dropped_loss += 1
            return
        deliver(self._delay_us())
        if faults.duplicate and rng.random() < faults.duplicate:
            self.counters.duplicated += 1
            deliver(self._delay_us())

    def _delay_us(self) -> int:
        faults = self.faults
        rng = self.rng
        delay = rng.randint(faults.delay_us_min, faults.delay_us_max)
        if faults.reorder and rng.random() < faults.reorder:
            delay += rng.randint(0, faults.reorder_delay_us_max)
        return delay


def split_links(group_a: Iterable[int], group_b: Iterable[int]) -> list[tuple[int, int]]:
    """Both directions between two groups (a symmetric partition), in sorted order."""
    a = sorted(group_a)
    b = sorted(group_b)
    return [(x, y) for x in a for y in b] + [(y, x) for x in a for y in b]
