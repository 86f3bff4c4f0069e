"""One logging set-up for the node and its worker processes."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"

# Libraries that log every association or copied module at INFO: an administrator
# reads the node's own lines; --verbose shows theirs too.
CHATTY = ("pynetdicom", "highdicom")


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
