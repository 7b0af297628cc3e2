"""One module per command group; each imports heavy libraries inside its functions."""
