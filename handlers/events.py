"""The social domain's events. Frozen, tagged Structs: new fields get defaults; fields are never renamed or reordered.

Each type is one stream per partition. `card.added` is the busiest type, so it is split into 4 partitions by
curator: the cards of one curator stay in order, and different curators are processed in parallel.
"""

from __future__ import annotations

from typing import ClassVar

from streamproc import Event


class CardAddedToLibrary(Event, tag="card.added"):
    """A curator saved a card (a link, a note) to their library."""

    partitions: ClassVar[int] = 4
    partition_key: ClassVar[str | None] = "curator_id"

    card_id: str
    curator_id: str
    url: str | None = None
    title: str | None = None


class CardRemoved(Event, tag="card.removed"):
    """A curator removed a card from their library."""

    card_id: str
    curator_id: str


class UrlShared(Event, tag="url.shared"):
    """Someone shared a web address with their followers."""

    url: str
    sharer_id: str
    comment: str | None = None


class CollectionCreated(Event, tag="collection.created"):
    """A curator started a new collection of cards."""

    collection_id: str
    owner_id: str
    name: str


class UserFollowed(Event, tag="user.followed"):
    """`follower_id` now follows `followee_id`."""

    follower_id: str
    followee_id: str


class AccountNotice(Event, tag="notify.account"):
    """Something a user must hear about themselves: a password reset link (lane 0: now, whatever the feed traffic),
    a sign-in from a new device (lane 1, the default) or a tip about their account (lane 2: whenever there is
    room). One type, three priority lanes: see handlers/notifications.py."""

    priorities: ClassVar[int] = 3
    default_priority: ClassVar[int | None] = 1

    user_id: str
    kind: str  # "password_reset", "new_sign_in", "tip"
    text: str
    url: str | None = None


class UnreadNotificationsReminder(Event, tag="reminder.unread"):
    """Remind `user_id` of the notifications they have not read. Published delayed by the notifications group
    (`delay=`), with the event id `unread:{user_id}`: while one waits, more notifications schedule no other."""

    user_id: str
