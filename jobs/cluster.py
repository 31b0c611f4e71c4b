"""`python jobs/cluster.py` (what `ray job submit` runs): Frame clusters (FLEA): k-means over one layer's frames per outer fold; out-of-fold cluster ids into the store. The code is ray_ser.jobs.cluster."""
import _bootstrap  # noqa: F401  (source checkout on sys.path)

from ray_ser.jobs.cluster import main

if __name__ == "__main__":
    main()
