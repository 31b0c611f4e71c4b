"""`python jobs/train.py` (what `ray job submit` runs): Train emotion models on the store with Ray Train: one run per outer fold, early-stopped on inner validation. The code is ray_ser.jobs.train."""
import _bootstrap  # noqa: F401  (source checkout on sys.path)

from ray_ser.jobs.train import main

if __name__ == "__main__":
    main()
