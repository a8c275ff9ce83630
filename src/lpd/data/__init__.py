"""Data: BCSS-WSSS, tile mosaics, synthetic tissue, augmentation, slides, tags."""
