"""Audio files and bodies in and out through PyAV (FFmpeg): decoding, probing, codec round
trips. No torch, no sockets."""
