"""Command-line tools: list-file builders, the synthetic data set generator, the demo."""
