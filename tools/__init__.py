"""Command-line tools: list-file builders, the synthetic data set generator, the demo, the
comparison of training runs, and the plot the demo and the comparison share."""
