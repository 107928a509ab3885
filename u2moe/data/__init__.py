"""Audio I/O, features, CMVN, tokenizers, manifests, augmentation and batching."""
