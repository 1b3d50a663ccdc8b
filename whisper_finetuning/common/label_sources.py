"""Where a row's transcript came from: the ``label_source`` column (standard library only).

The pseudo-labeller writes ``label_source: pseudo``; any other value (``human``, or none) is a
transcript a person wrote. The summaries and the diagnosis report per value; training scales
pseudo-labelled rows' loss by ``pseudo_label_weight``.
"""

LABEL_SOURCE = "label_source"
PSEUDO = "pseudo"


def loss_weights(label_sources, pseudo_label_weight):
    """Each row's loss weight (``pseudo_label_weight`` for pseudo-labelled rows, else 1), or
    None when every weight would be 1 (``label_sources`` None: the manifest has no column)."""
    if label_sources is None or pseudo_label_weight == 1:
        return None
    return [pseudo_label_weight if source == PSEUDO else 1.0 for source in label_sources]
