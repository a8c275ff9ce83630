"""Slide access: everything between a file on disk and pixels at a magnification.

- ``open_slide`` / ``Slide`` (``lpd.wsi.slide``): a slide or plain image as lazy dask
  levels; the tifffile backend is ``lpd.wsi._tiff``, its header checks
  ``lpd.wsi.tiff_checks``; the OpenSlide backend (MRXS, SCN, BIF, Philips, VMS, DICOM-WSI)
  ``lpd.wsi._openslide``; which reads a file, ``lpd.wsi._routing`` (``reader_summary``
  says which did).
- ``lpd.wsi.pixels``: stored samples to ``(H, W, 3) uint8`` RGB, one rule for every reader;
  ``lpd.wsi.images``: small image files (PNG, JPEG, TIFF tiles) read whole.
- ``as_pyramid`` / ``Pyramid`` and the one level rule ``choose_level`` / ``resize_factor``
  (``lpd.wsi.levels``).
- ``RegionSource`` (``lpd.wsi.region``): a region of a level seen through an output grid,
  resampled the same way for any tiling.
- Tissue detection (``lpd.wsi.tissue``).

This package imports nothing from ``lpd.data``, ``lpd.infer``, ``lpd.io`` or the model.
"""

from lpd.wsi.levels import MPP_TOLERANCE, Pyramid, as_pyramid, choose_level, resize_factor
from lpd.wsi.region import RegionSource, read_array
from lpd.wsi.slide import Slide, is_dicom_folder, open_slide, reader_summary

__all__ = ["MPP_TOLERANCE", "Pyramid", "RegionSource", "Slide", "as_pyramid", "choose_level",
           "is_dicom_folder", "open_slide", "read_array", "reader_summary", "resize_factor"]
