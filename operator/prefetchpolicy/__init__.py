"""The PrefetchPolicy custom resource: predictor configuration and prefetch-quality status."""
