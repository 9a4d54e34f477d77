"""Where records come from: discovery on object storage, fetching, and format decoding."""

from ecgembed.sources.discover import RecordRef, discover
from ecgembed.sources.reader import decode_raw, fetch_raw, read_record
from ecgembed.sources.record import RawRecord, Record

__all__ = ["RawRecord", "Record", "RecordRef", "discover", "decode_raw", "fetch_raw", "read_record"]
