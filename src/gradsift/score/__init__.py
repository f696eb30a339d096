"""Scoring criteria: influence scores and cheap baselines."""
