"""Real services the tests start themselves on loopback: a local Ray cluster and an S3-compatible object store."""
