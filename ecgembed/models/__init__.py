"""Plain-torch re-implementations of the two ECG foundation models ecgembed runs.

Each sub-package (``melp``, ``ecgfm_ked``) holds the model modules, the loader for the
published checkpoint layout, and re-exports the preprocessing that the weights expect.
Nothing here imports Ray: the models work in a notebook exactly as in an actor.
"""
