"""The example social domain: events, and the handler groups that react to them.

    social-graph   user.followed                 -> who follows whom
    notifications  card.added, collection.created -> a capped notification list per follower (deduplicated)
    feeds          card.added, url.shared         -> a capped home feed per follower (naturally idempotent)

Importing the handler modules here registers their handlers with `handlers.app.app`.
"""

from handlers import feeds, notifications, social_graph

__all__ = ["feeds", "notifications", "social_graph"]
