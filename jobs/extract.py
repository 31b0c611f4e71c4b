"""`python jobs/extract.py` (what `ray job submit` runs): Extract every layer of a speech model into the LanceDB store, clean and at each SNR. The code is ray_ser.jobs.extract."""
import _bootstrap  # noqa: F401  (source checkout on sys.path)

from ray_ser.jobs.extract import main

if __name__ == "__main__":
    main()
