"""`python jobs/evaluate.py ...` (what `ray job submit` runs): `ray-ser evaluate ...`, code in ray_ser.jobs.evaluate."""
import _bootstrap  # noqa: F401  (source checkout on sys.path)

from ray_ser.cli import job_entry

if __name__ == "__main__":
    job_entry("evaluate")
