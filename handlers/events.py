"""The social domain's events. Frozen, tagged Structs: new fields get defaults; fields are never renamed or reordered.

Each type is one stream per partition. `card.added` is the busiest type, so it is split into 4 partitions by
curator: the cards of one curator stay in order, and different curators are processed in parallel.

`Event` is frozen, and so is every subclass at run time; `frozen=True` repeats it for the type checker, which
does not yet see it inherited.
"""

from __future__ import annotations

from typing import ClassVar

from streamproc import Event


class CardAddedToLibrary(Event, tag="card.added", frozen=True):
    """A curator saved a card (a link, a note) to their library."""

    partitions: ClassVar[int] = 4
    partition_key: ClassVar[str | None] = "curator_id"

    card_id: str
    curator_id: str
    url: str | None = None
    title: str | None = None


class CardRemoved(Event, tag="card.removed", frozen=True):
    """A curator removed a card from their library."""

    card_id: str
    curator_id: str


class UrlShared(Event, tag="url.shared", frozen=True):
    """Someone shared a web address with their followers."""

    url: str
    sharer_id: str
    comment: str | None = None


class CollectionCreated(Event, tag="collection.created", frozen=True):
    """A curator started a new collection of cards."""

    collection_id: str
    owner_id: str
    name: str


class UserFollowed(Event, tag="user.followed", frozen=True):
    """`follower_id` now follows `followee_id`."""

    follower_id: str
    followee_id: str
