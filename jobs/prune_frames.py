"""`python jobs/prune_frames.py` (what `ray job submit` runs): Write a saliency-pruned copy of one layer's frames: only the dimensions saliency keeps at a keep ratio. The code is ray_ser.jobs.prune_frames."""
import _bootstrap  # noqa: F401  (source checkout on sys.path)

from ray_ser.jobs.prune_frames import main

if __name__ == "__main__":
    main()
