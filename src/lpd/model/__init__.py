"""The model: timm features-only backbone, prototype (or CAM) head, LPDModel."""

from lpd.model.backbone import create_backbone, imagenet_classifier
from lpd.model.lpd_model import LPDModel, LPDOutput, create_model

__all__ = ["LPDModel", "LPDOutput", "create_backbone", "create_model", "imagenet_classifier"]
