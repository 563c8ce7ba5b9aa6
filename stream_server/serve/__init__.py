"""The running server: the ASGI app and its routes, the guard and tokens, the service that owns
every live stream, the update hub, the timeline store, metrics and uploads."""
