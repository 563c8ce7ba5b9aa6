"""genrecast: a real-time music-genre monitor (live audio in, a live genre timeline out)."""


def version() -> str:
    """This installation's version, from its package metadata."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("genrecast")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"
