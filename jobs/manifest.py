"""`python jobs/manifest.py` (what `ray job submit` runs): Write a corpus manifest as Parquet: ``python jobs/manifest.py --corpus emodb --out emodb.parquet``. The code is ray_ser.jobs.manifest."""
import _bootstrap  # noqa: F401  (source checkout on sys.path)

from ray_ser.jobs.manifest import main

if __name__ == "__main__":
    main()
