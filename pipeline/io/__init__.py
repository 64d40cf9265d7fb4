"""Reading scenes: storage (local and s3://), safe output paths, lazy scene windows, grid
alignment, band choice and normalisation. Shared by the engine and training; knows no model."""
