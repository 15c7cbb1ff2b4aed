"""Local development: a throwaway redis-server and `streamproc dev`."""

from .localredis import LocalRedis, LocalRedisError

__all__ = ["LocalRedis", "LocalRedisError"]
