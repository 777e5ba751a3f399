"""Storage: every unit of work against the database, and the backplane between processes."""
