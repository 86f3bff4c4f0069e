"""Delivering result objects: to the result folder always, to the PACS when one is configured."""
