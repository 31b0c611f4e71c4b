"""`python jobs/pipeline.py --config FILE` (what `ray job submit` runs): `ray-ser run FILE`, code in ray_ser.jobs.pipeline."""
import _bootstrap  # noqa: F401  (source checkout on sys.path)

from ray_ser.cli import job_entry

if __name__ == "__main__":
    job_entry("run")
