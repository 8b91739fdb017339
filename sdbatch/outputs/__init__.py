"""Stage 4, pixels -> files and rows: the Parquet manifest, PNG infotext, reading, export, repair. pyarrow, no torch."""
