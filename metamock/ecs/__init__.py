"""The ECS face: upstream clients for TMDE v4 and container credentials, and the credential cache."""
