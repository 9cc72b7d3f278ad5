"""`metamock doctor`: one module per group of checks, a runner, and the report."""
