"""Helpers shared by test modules: imported by tests, never themselves collected as tests."""
