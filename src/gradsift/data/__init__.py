"""Reading, validating and tokenising candidate pools, target sets and preference pairs."""
