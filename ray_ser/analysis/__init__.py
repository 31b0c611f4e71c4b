"""Analyses of the stored embeddings, each fitted per outer fold on its training speakers: dimension saliency,
layer criteria, linear probes, frame clusters and pruned frames."""
