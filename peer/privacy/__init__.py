"""Privacy of what a teacher sends: leakage measures and membership-inference attacks."""

from peer.privacy.attacks import (
    AttackResult,
    ReconstructionPair,
    aligned_distance_attack,
    aligned_min_distance,
    best,
    calibrated_attack,
    calibrated_scores,
    confidence_attack,
    confidence_scores,
    distance_attack,
    logit_confidence,
    min_distance,
    predict_proba,
    reconstruction_pairs,
    roc,
    run_attacks,
    save_reconstruction_grid,
    tpr_at_fpr,
)
from peer.privacy.measures import (
    LeakageStats,
    aligned_nearest_ratio,
    measure_leakage,
    near_copy_mask,
    nearest,
    nearest_ratio,
    private_nn,
    shifted,
    ssim,
)

__all__ = [
    "AttackResult", "LeakageStats", "ReconstructionPair", "aligned_distance_attack", "aligned_min_distance",
    "aligned_nearest_ratio", "nearest_ratio", "shifted", "best", "calibrated_attack", "calibrated_scores",
    "confidence_attack", "confidence_scores", "distance_attack", "logit_confidence", "measure_leakage",
    "min_distance", "near_copy_mask", "nearest", "predict_proba", "private_nn", "reconstruction_pairs", "roc",
    "run_attacks", "save_reconstruction_grid", "ssim", "tpr_at_fpr",
]
