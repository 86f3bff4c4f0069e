"""Deciding when a study is complete, and which tasks run on which series."""
