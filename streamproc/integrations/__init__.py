"""Helpers for the frameworks streamproc is used from. Each module imports its framework: import the one you use
(`streamproc.integrations.fastapi`, `streamproc.integrations.aiohttp`); `import streamproc` imports none of them."""
