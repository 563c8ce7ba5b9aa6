"""The model side: log-mel features, the models and their loading, the batched runner, the
engine thread that owns the device, and one-shot classification. torch; no sockets."""
