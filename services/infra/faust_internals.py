"""The one module that touches private attributes of faust and aiokafka (STYLE.md item 8).

faust-streaming offers no public way to set the consumer's fetch wait (it hard-codes
1500 ms: BROKER.md), to forget its offset bookkeeping for a partition, or to reach the
aiokafka consumer its thread owns; aiokafka offers no public way to ask whether a
group join is pending or to leave a group at generation 0 (Tansu's). The stream
processors need all of these (`services/infra/faustapp.py`: the fetch-wait override,
`GroupRejoin` after a broker reset), so they are done here and nowhere else:

- `WRITTEN_FOR` names the versions this module was written and tested against;
  importing it under any other version fails at once, naming both (`check_versions`).
- `PRIVATE_ACCESSES` lists each private attribute used; tests/unit/test_faust_internals.py
  checks each one against the installed libraries, and fails when one is renamed or
  removed, and checks that no other module under services/ touches one.

Upgrading faust-streaming or aiokafka: change constraints.txt, run that test and
tests/integration/test_faust_agents.py and tests/e2e/test_broker_reset.py, then update
`WRITTEN_FOR`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib.metadata import version
from typing import Any, NamedTuple

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import LeaveGroupRequest
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka

WRITTEN_FOR: dict[str, str] = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}
"""Distribution -> the exact version whose private attributes this module relies on."""


class PrivateAccess(NamedTuple):
    """One private attribute used here: where it lives and why."""

    owner: str
    """Dotted path of the class that defines it."""
    name: str
    kind: str
    """'method' (looked up on the class) or 'attribute' (set in the class's source)."""
    why: str


PRIVATE_ACCESSES: tuple[PrivateAccess, ...] = (
    PrivateAccess(
        "faust.transport.drivers.aiokafka.Consumer",
        "_new_consumer_thread",
        "method",
        "overridden: faust builds its consumer thread here by name",
    ),
    PrivateAccess(
        "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread",
        "_create_worker_consumer",
        "method",
        "overridden: to set the fetch wait of the consumer it creates",
    ),
    PrivateAccess(
        "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread",
        "_fetch_records",
        "method",
        "overridden: where the consumer thread takes fetched records (the fetch pace)",
    ),
    PrivateAccess(
        "aiokafka.consumer.consumer.AIOKafkaConsumer",
        "_fetch_max_wait_ms",
        "attribute",
        "the fetch wait, read by the fetcher at start (faust passes 1500)",
    ),
    PrivateAccess(
        "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread",
        "_consumer",
        "attribute",
        "the aiokafka consumer, None until started (the fetch wait is read through it)",
    ),
    PrivateAccess(
        "aiokafka.consumer.consumer.AIOKafkaConsumer",
        "_fetcher",
        "attribute",
        "the fetcher, None until started",
    ),
    PrivateAccess(
        "aiokafka.consumer.fetcher.Fetcher",
        "_fetch_max_wait_ms",
        "attribute",
        "the fetch wait the fetcher actually uses, read for each fetch it sends",
    ),
    PrivateAccess(
        "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread",
        "_ensure_consumer",
        "method",
        "the aiokafka consumer the thread owns",
    ),
    PrivateAccess(
        "faust.transport.consumer.ThreadDelegateConsumer",
        "_thread",
        "attribute",
        "the consumer thread, to run calls on the aiokafka consumer's loop",
    ),
    PrivateAccess(
        "faust.transport.consumer.Consumer",
        "_commit",
        "method",
        "commit given offsets (the public commit only commits acknowledged ones)",
    ),
    PrivateAccess(
        "faust.transport.consumer.Consumer",
        "_gap",
        "attribute",
        "per-partition offset bookkeeping, dropped after a broker reset",
    ),
    PrivateAccess("faust.transport.consumer.Consumer", "_acked", "attribute", "as _gap"),
    PrivateAccess("faust.transport.consumer.Consumer", "_acked_index", "attribute", "as _gap"),
    PrivateAccess("faust.transport.consumer.Consumer", "_committed_offset", "attribute", "as _gap"),
    PrivateAccess(
        "aiokafka.consumer.consumer.AIOKafkaConsumer",
        "_client",
        "attribute",
        "metadata: refresh it, read the partitions of a topic",
    ),
    PrivateAccess(
        "aiokafka.consumer.consumer.AIOKafkaConsumer",
        "_subscription",
        "attribute",
        "the subscription a pending rejoin is asked about",
    ),
    PrivateAccess(
        "aiokafka.consumer.consumer.AIOKafkaConsumer",
        "_coordinator",
        "attribute",
        "the group coordinator: member id, pending rejoin, leaving the group",
    ),
    PrivateAccess(
        "aiokafka.consumer.group_coordinator.GroupCoordinator",
        "_send_req",
        "method",
        "send LeaveGroup at generation 0 (aiokafka leaves only above 0)",
    ),
)


class LibraryVersionError(RuntimeError):
    """faust-streaming or aiokafka is not the version this module was written for."""


def check_versions(installed: Callable[[str], str] = version) -> None:
    """Fail loudly unless the installed libraries are those of `WRITTEN_FOR`."""
    wrong = [
        f"{dist} {installed(dist)} (written for {wanted})"
        for dist, wanted in WRITTEN_FOR.items()
        if installed(dist) != wanted
    ]
    if wrong:
        raise LibraryVersionError(
            "services/infra/faust_internals.py relies on private attributes of "
            + ", ".join(wrong)
            + ": check them (tests/unit/test_faust_internals.py) and update WRITTEN_FOR"
        )


check_versions()


# -- the fetch-wait override -------------------------------------------------------

FETCH_MAX_WAIT_ATTR = "incidents_fetch_max_wait_ms"
"""Attribute of the faust app that carries `kafka_fetch_max_wait_ms` to its consumer."""
FETCH_PACE_ATTR = "incidents_fetch_pace"
"""Attribute of the faust app holding a factory of the consumer's fetch pace: called
with the function that sets the wait, it returns an object with `started`, `start()`,
`records()` and `stop()` (`services.infra.kafka.FetchPace`)."""


def set_consumer_fetch_wait(consumer: Any, wait_ms: int) -> None:
    """The next fetches of an aiokafka consumer wait `wait_ms` (its fetcher reads the
    wait for each fetch it sends; a consumer not started yet passes it on at start)."""
    consumer._fetch_max_wait_ms = wait_ms
    fetcher = consumer._fetcher
    if fetcher is not None:
        fetcher._fetch_max_wait_ms = wait_ms


class _QuickFetchThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread with a configurable fetch wait (faust hard-codes 1500 ms),
    paced by the app's fetch pace: short while records come, long when idle."""

    _pace: Any = None

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = getattr(self.app, FETCH_MAX_WAIT_ATTR, 20)
        factory = getattr(self.app, FETCH_PACE_ATTR, None)
        if self._pace is not None:  # the pace of a consumer made before this one
            self._pace.stop()
        self._pace = None
        if factory is not None:
            self._pace = factory(lambda wait_ms: set_consumer_fetch_wait(consumer, wait_ms))
        return consumer

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,  # noqa: ASYNC109 - faust's signature
        max_records: int | None = None,
    ) -> Any:
        # In the consumer thread, on its loop, where the fetcher runs: the wait is set
        # before the fetcher sends its next fetch (it waits until these are taken).
        pace = self._pace
        if pace is not None and not pace.started:
            pace.start()
        records = await super()._fetch_records(
            consumer, active_partitions, timeout=timeout, max_records=max_records
        )
        if pace is not None and records:
            pace.records()
        return records


class _QuickConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _QuickFetchThread:
        # faust builds its thread here by name (a `threadClass` attribute is ignored):
        # without this override every agent fetched with a 1.5 s wait, and records
        # reached triage and escalation 0-750 ms late on Tansu.
        return _QuickFetchThread(self, loop=self.loop, beacon=self.beacon)


class QuickTransport(faust_aiokafka.Transport):
    """The aiokafka transport with `_QuickConsumer`: broker URL scheme ``incidents://``."""

    Consumer = _QuickConsumer


TRANSPORTS.data["incidents"] = f"{__name__}:QuickTransport"


def fetch_max_wait_ms(app: Any) -> int | None:
    """The fetch wait of the app's running aiokafka consumer (None before it started)."""
    thread = getattr(app.consumer, "_thread", None)
    consumer = getattr(thread, "_consumer", None)
    fetcher = getattr(consumer, "_fetcher", None)
    return None if fetcher is None else int(fetcher._fetch_max_wait_ms)


# -- what GroupRejoin needs ---------------------------------------------------------


async def call_in_consumer_thread(app: Any, method: Callable[[], Awaitable[Any]]) -> Any:
    """Run `method` where faust's consumer thread owns the aiokafka consumer."""
    return await app.consumer._thread.call_thread(method)


def aiokafka_consumer(app: Any) -> Any:
    """The aiokafka consumer of the app (call from its thread: `call_in_consumer_thread`)."""
    return app.consumer._thread._ensure_consumer()


async def forget_and_commit(app: Any, offsets: Mapping[TopicPartition, int]) -> None:
    """Drop faust's bookkeeping for these partitions (as on a revoke) and commit `offsets`.

    faust keeps its read and acknowledged offsets per partition; after a broker reset
    they belong to the old broker's topics.
    """
    consumer = app.consumer
    for tp in offsets:
        for table in (consumer._gap, consumer._acked, consumer._acked_index):
            table.pop(tp, None)
        consumer._committed_offset.pop(tp, None)
    if offsets:
        await consumer._commit(dict(offsets))


def group_settled(consumer: Any) -> bool:
    """The consumer is a member of its group and no rejoin is pending."""
    subscription = consumer._subscription.subscription
    return bool(
        subscription is not None
        and consumer._coordinator.member_id
        and not consumer._coordinator.need_rejoin(subscription)
    )


async def refresh_metadata(consumer: Any) -> None:
    """Fetch fresh metadata (a changed partition count makes aiokafka rejoin)."""
    await consumer._client.force_metadata_update()


def topic_partitions(consumer: Any, topics: Iterable[str]) -> set[TopicPartition]:
    """Every partition of `topics` in the consumer's metadata."""
    cluster = consumer._client.cluster
    return {
        TopicPartition(topic, partition)
        for topic in topics
        for partition in cluster.partitions_for_topic(topic) or ()
    }


async def leave_and_rejoin(consumer: Any) -> KafkaError | None:
    """Leave the group (also at generation 0) and join again under a new member id.

    Returns the error if the LeaveGroup request failed (the broker then times the old
    member out); the rejoin is asked for in any case.
    """
    coordinator = consumer._coordinator
    failed: KafkaError | None = None
    try:
        await coordinator._send_req(LeaveGroupRequest(coordinator.group_id, coordinator.member_id))
    except KafkaError as exc:
        failed = exc
    coordinator.reset_generation()
    coordinator.request_rejoin()
    return failed
