"""Where records come from: discovery on object storage, fetching, and format decoding."""

from ecgembed.sources.discover import Discovery, RecordRef, discover
from ecgembed.sources.formats.base import Limits
from ecgembed.sources.reader import decode_raw, fetch_many, fetch_raw, read_record
from ecgembed.sources.record import RawRecord, Record

__all__ = ["Discovery", "Limits", "RawRecord", "Record", "RecordRef", "discover", "decode_raw", "fetch_many",
           "fetch_raw", "read_record"]
