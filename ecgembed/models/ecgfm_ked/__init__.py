"""ECGFM-KED (Tian et al., Cell Reports Medicine 2024) in plain torch: ECG embedding + zero-shot scores.

    import ecgembed
    from ecgembed.labels import load_label_set
    from ecgembed.models.ecgfm_ked import class_features, load_ked, preprocess

    model = load_ked()                                   # default: the Zenodo release; or a path/s3/https URI
    feats = class_features(load_label_set("ptbxl"))      # (71, 768), computed once, then cached
    leads = ecgembed.standard_leads(ecgembed.read_record(uri))
    x = preprocess(leads.signal, leads.fs)[None]         # (1, 12, 1000) float32, mV, 100 Hz
    out = model.embed(x, [feats])                        # a list: one feature array per label set
    out["embedding"]   # (B, 768) mean of the 32 ECG tokens, raw
    out["scores"][0]   # (B, 71) softmax(TQN logits)[..., 1], valid for this class list only

Modules: ``config`` (the release's numbers), ``xresnet`` (ECG encoder), ``tqn`` (query network),
``text`` (BERT side + class-feature cache), ``checkpoint`` (safe loading + key mapping),
``model`` (the two ECG-side modules together). Spec: ``specs/ecgfm-ked.md``; docs:
``docs/models/ecgfm-ked.md``.
"""

from ecgembed.preprocess import KED_PREPROC_VERSION as PREPROC_VERSION
from ecgembed.preprocess import ked_input as preprocess  # the input these weights expect

from .config import DEFAULT_TEXT_MODEL, DEFAULT_WEIGHTS_URI, KEDConfig
from .model import ECGFMKED, load_ked, precision_tag
from .text import KEDText, class_features, load_ked_text

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "DEFAULT_WEIGHTS_URI",
    "ECGFMKED",
    "KEDConfig",
    "KEDText",
    "PREPROC_VERSION",
    "class_features",
    "load_ked",
    "load_ked_text",
    "precision_tag",
    "preprocess",
]
