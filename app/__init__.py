"""tuneserve's service: REST API, persistent jobs and the workers that feed them to :mod:`tuner`."""
