"""The HTTP ingest service (aiohttp): validation, authentication, the OpenAPI document."""
