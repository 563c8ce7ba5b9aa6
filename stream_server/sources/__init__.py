"""Where live audio comes from besides the WebSocket feed: pulled URLs and files (with the
policy of what may be pulled and the checked HTTP client) and WebRTC peers. Sources talk to the
service through :class:`stream_server.types.StreamSink` and
:class:`~stream_server.types.StreamHost`."""
