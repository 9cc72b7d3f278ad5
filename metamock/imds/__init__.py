"""The IMDS face: tokens, the metadata tree, and the HTTP server."""
