"""`python jobs/pipeline.py` (what `ray job submit` runs): The whole pipeline on one corpus: manifest -> all-layer extraction -> saliency + probes -> frame clusters per. The code is ray_ser.jobs.pipeline."""
import _bootstrap  # noqa: F401  (source checkout on sys.path)

from ray_ser.jobs.pipeline import main

if __name__ == "__main__":
    main()
