"""Talking to Redis: commands packed by hand for the hot paths, and the Lua scripts (one .lua file each)."""
