"""Public-API usage that `mypy --strict` checks: if a signature regresses, the type check fails."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import ClassVar

from streamproc import App, Backoff, Context, DeadLetter, Event, Outgoing, Published, Retry, Settings, SyncPublisher


class CardAddedToLibrary(Event, tag="card.added"):
    card_id: str
    curator_id: str
    url: str | None = None


app = App("social", settings=Settings(redis_url="redis://localhost:6379/0"))

# A producer-only app declares the groups its events feed, so they exist before their workers first run.
producer = App("social", settings=Settings(redis_url="redis://localhost:6379/0"))
producer.register(CardAddedToLibrary, groups=["notifications"])
producer.register(CardAddedToLibrary, groups={"search-index": "all"})


@app.handler(CardAddedToLibrary, group="notifications", concurrency=50, max_attempts=5,
             backoff=Backoff(base=0.5, cap=60), timeout=10.0, start="all")
async def notify(event: CardAddedToLibrary, ctx: Context) -> None:
    curator: str = event.curator_id
    attempt: int = ctx.attempt
    lane: int | None = ctx.priority  # the lane it came from (None: its type has no priority lanes)
    if not curator:
        raise DeadLetter("no curator")
    if attempt < 2:
        raise Retry(delay=1.0)
    if await ctx.once(f"notify:{curator}"):
        ctx.log.info("notified followers of %s (lane %s)", curator, lane)


async def produce() -> None:
    async with app:
        one: Published = await app.publish(CardAddedToLibrary(card_id="c1", curator_id="u1"))
        many: list[Published] = await app.publish_many(
            [CardAddedToLibrary(card_id="c2", curator_id="u1"), Outgoing(CardAddedToLibrary(card_id="c3",
                                                                                           curator_id="u2"),
                                                                        event_id="client-id-1")])
        assert one.event_id and len(many) == 2


def produce_from_sync_code() -> None:
    """A Django view, a Flask route or a Celery task: one SyncPublisher per process, shared by its threads."""
    with SyncPublisher(app) as publisher:
        one: Published = publisher.publish(CardAddedToLibrary(card_id="c4", curator_id="u1"), event_id="order-4")
        many: list[Published] = publisher.publish_many([CardAddedToLibrary(card_id="c5", curator_id="u1")],
                                                       atomic=True)
        assert one.appended and len(many) == 1


class PasswordReset(Event, tag="notify.reset"):
    """Priority lanes: three streams per partition, lane 0 read first."""

    priorities: ClassVar[int] = 3
    default_priority: ClassVar[int | None] = 1
    user_id: str


async def produce_urgently() -> None:
    async with app:
        urgent: Published = await app.publish(PasswordReset(user_id="u1"), priority=0)
        later: list[Published] = await app.publish_many([Outgoing(PasswordReset(user_id="u2"), priority=2)])
        assert urgent.stream and later
    with SyncPublisher(app) as publisher:
        publisher.publish(PasswordReset(user_id="u3"), priority=0)


async def produce_later() -> None:
    """Delayed events: seconds, a timedelta or an aware datetime; cancelled by event id while they wait."""
    async with app:
        reminder: Published = await app.publish(CardAddedToLibrary(card_id="c6", curator_id="u1"), delay=30.0)
        digest: Published = await app.publish(CardAddedToLibrary(card_id="c7", curator_id="u1"),
                                              at=datetime(2030, 1, 1, 9, tzinfo=UTC))
        batch: list[Published] = await app.publish_many([
            Outgoing(CardAddedToLibrary(card_id="c8", curator_id="u1"), delay=timedelta(minutes=5))])
        due: int | None = reminder.due_ms
        cancelled: bool = await app.cancel_delayed(CardAddedToLibrary, digest.event_id, partition_key="u1")
        assert reminder.scheduled and batch and due and cancelled in (True, False)
    with SyncPublisher(app) as publisher:
        publisher.publish(CardAddedToLibrary(card_id="c9", curator_id="u1"), delay=timedelta(hours=1))
        publisher.cancel_delayed(CardAddedToLibrary, "order-9")
