"""One module per ECG file format; each decodes from bytes already fetched (no I/O here)."""
