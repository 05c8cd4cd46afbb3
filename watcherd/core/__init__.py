"""The pure core: values, rules and time math; no I/O, no asyncio, no clock."""
