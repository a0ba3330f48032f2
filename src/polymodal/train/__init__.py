"""Training: configuration, the model+loss task, optimisation, the loop with
checkpoint/resume, gradient caching and data parallelism."""
