"""The example social domain: events, and the handler groups that react to them.

    social-graph   user.followed                    -> who follows whom
    notifications  card.added, collection.created   -> a push per follower through the Notifier, and a capped
                                                       notification list per follower (both deduplicated);
                                                       schedules each follower's delayed unread reminder
    reminders      reminder.unread (delayed)        -> "you have N unread notifications", one a day at most
    feeds          card.added, url.shared           -> a capped home feed per follower (naturally idempotent)
    analytics      card.added, card.removed, url.shared, collection.created, user.followed
                                                    -> daily counters per type and user (deduplicated)
    digest         digest.due, from the cron schedule "daily-digest" (06:00 UTC, one append a day whatever the
                   number of workers) -> the day's digest from the analytics counters

Importing the handler modules here registers their handlers with `handlers.app.app`. Beside them: notifier.py
(the Notifier interface and its HTTP default), sink.py (a local endpoint for it, run by `streamproc dev`) and
traffic.py (a generator of plausible traffic, posted to the ingest endpoint; used by the demo).
"""

from handlers import analytics, digest, feeds, notifications, reminders, social_graph

__all__ = ["analytics", "digest", "feeds", "notifications", "reminders", "social_graph"]
