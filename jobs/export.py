"""`python jobs/export.py ...` (what `ray job submit` runs): `ray-ser export ...`, code in ray_ser.jobs.export."""
import _bootstrap  # noqa: F401  (source checkout on sys.path)

from ray_ser.cli import job_entry

if __name__ == "__main__":
    job_entry("export")
