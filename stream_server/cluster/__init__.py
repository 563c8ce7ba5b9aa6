"""genrecast beyond one machine, on NATS with JetStream: the NATS servers of a cluster
(:mod:`.nats_server`)."""
