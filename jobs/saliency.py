"""`python jobs/saliency.py` (what `ray job submit` runs): Emotion saliency of every layer and dimension (CCS, MIS) on speaker-independent training folds;. The code is ray_ser.jobs.saliency."""
import _bootstrap  # noqa: F401  (source checkout on sys.path)

from ray_ser.jobs.saliency import main

if __name__ == "__main__":
    main()
