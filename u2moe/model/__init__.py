"""U2++ model: subsampling, Conformer encoder, MoE feed-forward, CTC, bidirectional decoder."""
