"""The scheduling engine: asyncio, behind ports; no SQL, sockets or filesystem of its own."""
