"""Data: video frame sampling, headline text, manifests, labels and datasets."""
