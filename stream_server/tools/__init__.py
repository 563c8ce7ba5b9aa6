"""The commands: the command line, the clients of a running server, benchmarks, the soak,
the doctor and the smoothing tuner."""
