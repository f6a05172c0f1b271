"""The peer watchdog of multi-process jobs (scaling/services/watchdog.py) against a fake coordination
service: a silent peer or an unreachable coordinator is a reason to stop, a finished peer is not.
The real thing, with a killed process: tests/test_multiprocess.py::test_dead_host_fails_fast."""

from scaling.services.watchdog import PeerWatchdog


class FakeService:
    def __init__(self):
        self.store: dict[str, str] = {}
        self.down = False

    def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None:
        if self.down:
            raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")
        self.store[key] = value

    def key_value_dir_get(self, prefix: str) -> list[tuple[str, str]]:
        if self.down:
            raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")
        return [(key, value) for key, value in self.store.items() if key.startswith(prefix)]


def watchdogs(service: FakeService, clock: list[float], count: int = 3) -> list[PeerWatchdog]:
    return [PeerWatchdog(service, index, count, timeout_seconds=10, on_lost=None, clock=lambda: clock[0])
            for index in range(count)]


def test_a_silent_peer_is_named_once_its_silence_reaches_the_timeout() -> None:
    service, clock = FakeService(), [0.0]
    first, second, third = watchdogs(service, clock)
    for _ in range(5):  # all beat for a while
        clock[0] += 1
        assert [w.check() for w in (first, second, third)] == [None, None, None]
    for _ in range(10):  # the third's host is gone; its last beat is seen at the next check
        clock[0] += 1
        assert (first.check(), second.check()) == (None, None)
    clock[0] += 1
    assert first.check() == "process 2 of 3 has not been heard from for 10 s (its host lost?)"


def test_a_finished_peer_is_not_waited_for_and_a_lost_coordinator_is_named() -> None:
    service, clock = FakeService(), [0.0]
    first, second = watchdogs(service, clock, count=2)
    first.check(), second.check()
    first.finished()
    for _ in range(30):
        clock[0] += 1
        assert second.check() is None
    service.down = True
    for _ in range(10):
        clock[0] += 1
        assert second.check() is None
    clock[0] += 1
    assert second.check().startswith("the job's coordinator (process 0) has been unreachable for 10 s (UNAVAILABLE")
