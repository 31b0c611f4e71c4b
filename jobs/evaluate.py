"""`python jobs/evaluate.py` (what `ray job submit` runs): Evaluate a training run: out-of-fold batch predictions with Ray Data for every evaluation condition in the. The code is ray_ser.jobs.evaluate."""
import _bootstrap  # noqa: F401  (source checkout on sys.path)

from ray_ser.jobs.evaluate import main

if __name__ == "__main__":
    main()
