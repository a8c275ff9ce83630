"""Inference: CAMs -> label maps for patches; tiled inference over slides."""
