"""The embedded default store: one SQLite file in state_dir."""
