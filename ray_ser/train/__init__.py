"""Training: fold plans, the Ray Data frame reader, the epoch loop, the Ray Train driver, the Tune search and
the neural network modules."""
