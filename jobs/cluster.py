"""Deprecated name of `jobs/frames.py` (the frame k-means stage; "cluster" now means the Ray cluster only)."""
import _bootstrap  # noqa: F401  (source checkout on sys.path)

from ray_ser.cli import job_entry

if __name__ == "__main__":
    job_entry("cluster")
