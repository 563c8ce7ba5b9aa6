"""genrecast beyond one machine, on NATS with JetStream: the NATS servers of a cluster
(:mod:`.nats_server`), what nodes and inference workers send each other (:mod:`.protocol`), the
inference worker (:mod:`.inference_worker`, ``genrecast worker``) and a node's engine made of the
workers (:mod:`.engine`)."""
