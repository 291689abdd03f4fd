"""Multi-task learning without Lightning: the tasks, what they share in a step, the weighting
strategies, the step engine and the gradient diagnostics. Tested without a Trainer."""
