"""edgestack: the CLI and the local stack (`edgestack up`); imports registry/ and templater/, never the reverse."""
