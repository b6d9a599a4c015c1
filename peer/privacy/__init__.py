"""Privacy of what a teacher sends: leakage measures and membership-inference attacks."""

from peer.privacy.measures import LeakageStats, measure_leakage, near_copy_mask, nearest, private_nn, ssim

__all__ = ["LeakageStats", "measure_leakage", "near_copy_mask", "nearest", "private_nn", "ssim"]
