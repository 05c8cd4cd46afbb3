"""Datastore pollers: local directories and Azure Blob prefixes (behind engine ports)."""
