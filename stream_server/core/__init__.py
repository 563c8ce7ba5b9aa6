"""The pure core: PCM and resampling, the gate, smoothing, labelling, offline decoding,
timelines and the per-stream session. numpy only: no torch, no I/O."""
