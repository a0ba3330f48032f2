"""Neural network models: layers, towers, and the models built from them."""

from polymodal.models.dual_encoder import DualEncoder, DualEncoderOutput, build_tower
from polymodal.models.tower import Tower, TowerFeatures

__all__ = ["DualEncoder", "DualEncoderOutput", "Tower", "TowerFeatures", "build_tower"]
