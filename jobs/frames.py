"""`python jobs/frames.py ...` (what `ray job submit` runs): `ray-ser frames ...`, code in ray_ser.jobs.frames."""
import _bootstrap  # noqa: F401  (source checkout on sys.path)

from ray_ser.cli import job_entry

if __name__ == "__main__":
    job_entry("frames")
