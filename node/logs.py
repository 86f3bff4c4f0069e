"""One logging set-up for the node and its worker processes.

Log lines name studies, series and instances by UID and peers by AE title and address,
never patients by name or ID. The one way patient data reached the logs was pynetdicom's
dump of C-FIND identifiers (the priors query by PatientID, answers with PatientName) at
``--verbose``; those dumps are off unless ``node.log_phi`` is true.
"""

from __future__ import annotations

import logging

from pynetdicom import _config as pynetdicom_config

LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"

# Libraries that log every association or copied module at INFO: an administrator
# reads the node's own lines; --verbose shows theirs too.
CHATTY = ("pynetdicom", "highdicom", "alembic")


def configure_logging(verbose: bool, *, log_phi: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    # Query and answer identifiers carry PatientID and PatientName.
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = log_phi
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = log_phi
