"""Torch modules and builders: the component registry, VLV encoder, caption decoder."""
