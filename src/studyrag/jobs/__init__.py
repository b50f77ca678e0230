"""Background jobs: upload ingestion, reindexing, notebook deletion, with live progress."""
