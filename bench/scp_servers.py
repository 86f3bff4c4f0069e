"""The SCPs the ingest benchmark sends to, each its own process: python -m bench.scp_servers."""

from __future__ import annotations

import argparse
import os
import threading
from pathlib import Path
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from node.config import NodeSettings
from node.dimse.scp import StorageSCP
from node.store.index import Index
from node.store.ingest import Ingest
from node.store.spool import Spool


def serve_bare(port: int, out_dir: Path) -> None:
    """A bare pynetdicom SCP that only writes and fsyncs each instance: the floor for ours."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def on_store(event: Any) -> int:
        path = out_dir / f"{event.request.AffectedSOPInstanceUID}.dcm"
        with path.open("wb") as handle:
            handle.write(event.encoded_dataset())
            handle.flush()
            os.fsync(handle.fileno())
        return 0x0000

    ae = AE(ae_title="BARE")
    ae.maximum_pdu_size = 0
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_STORE, on_store)])


def serve_node(port: int, data_dir: Path) -> None:
    """The node's own ingest path: SCP, durable spool, SQLite index."""
    settings = NodeSettings(ae_title="MEDGEMMA", port=port, data_dir=data_dir)
    index = Index(settings.resolved_database_url)
    scp = StorageSCP(settings, Ingest(Spool(data_dir / "spool"), index, reopen_on_late=True))
    scp.start("127.0.0.1")
    threading.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["bare", "node"])
    parser.add_argument("port", type=int)
    parser.add_argument("dir", type=Path)
    args = parser.parse_args()
    (serve_bare if args.kind == "bare" else serve_node)(args.port, args.dir)


if __name__ == "__main__":
    main()
