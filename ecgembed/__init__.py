"""ecgembed: embed 12-lead ECG archives with MELP and ECGFM-KED, into SQL-ready Parquet.

Notebook entry points::

    import ecgembed
    rec = ecgembed.read_record("s3://bucket/ptbxl/records500/00000/00001_hr")
    leads = ecgembed.standard_leads(rec)            # 12 x N in the order the models expect
    x_melp = ecgembed.preprocess.melp_input(leads.signal, leads.fs)   # 12 x 5000
    x_ked = ecgembed.preprocess.ked_input(leads.signal, leads.fs)     # 12 x 1000
"""

from ecgembed import preprocess
from ecgembed.errors import ECGError
from ecgembed.leads import MODEL_ORDER, standard_leads
from ecgembed.sources import Record, RecordRef, discover, read_record

__version__ = "0.1.0"
__all__ = ["ECGError", "MODEL_ORDER", "Record", "RecordRef", "discover", "preprocess", "read_record",
           "standard_leads"]
