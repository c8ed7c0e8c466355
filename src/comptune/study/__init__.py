"""The unlearning study: sweeps of methods × budgets × seeds × learning rates, and the demo."""
