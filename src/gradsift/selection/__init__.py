"""Turning scores into selections: budgets, top-k, quotas."""
