"""Test support: the hub harness's helpers, the history checker, the load harness, PostgreSQL."""
