"""Scene-scale engine: lazy scenes, global tile grid, blended inference, products, training data."""
