"""Looking at results: grids, animations, the gallery, replay of A1111 infotext."""
