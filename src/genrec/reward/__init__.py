"""The reward model: a SIM-style search-based user interest model that scores (user history, item) in [0, 1]."""
