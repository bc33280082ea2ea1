"""Training: inputs, the unit executor, the runner, tasks, distributed training, launchers, tuning, pre-training."""
