"""`python jobs/tune.py` (what `ray job submit` runs): Ray Tune search over layer, saliency keep-ratio, frame-cluster count, adversarial weight, learning rate,. The code is ray_ser.jobs.tune."""
import _bootstrap  # noqa: F401  (source checkout on sys.path)

from ray_ser.jobs.tune import main

if __name__ == "__main__":
    main()
