"""The seam to NATS: the one place nats-py is used, and the asyncio it needs."""
