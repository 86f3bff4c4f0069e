"""One module a schema revision, oldest first (see ``down_revision``)."""
