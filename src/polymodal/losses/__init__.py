"""Image-text training objectives, one per class, all sharing `ImageTextLoss`."""

from polymodal.losses.base import ImageTextLoss
from polymodal.losses.clip import ClipLoss
from polymodal.losses.ranking import TripletLoss, VSEppLoss
from polymodal.losses.siglip import SigLipLoss

__all__ = ["ClipLoss", "ImageTextLoss", "SigLipLoss", "TripletLoss", "VSEppLoss"]
